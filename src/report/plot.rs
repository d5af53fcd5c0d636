//! d2l's Animator chart of a training run (train loss, train acc, test acc against epochs) as
//! SVG and PNG, and the `predict_ch3` picture of images with their labels.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::data::Resize;
use crate::train::{History, Point};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Makes the embedded DejaVu Sans plotters' sans-serif (no system fonts needed).
fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// plotters' drawing errors carry the backend's error type; keep their description.
trait Plotted<T> {
    fn plotted(self) -> anyhow::Result<T>;
}

impl<T, E: std::fmt::Debug> Plotted<T> for Result<T, E> {
    fn plotted(self) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("drawing failed: {e:?}"))
    }
}

type Series = (&'static str, fn(&Point) -> Option<f64>, RGBColor, Option<(u32, u32)>);

/// d2l's legend and line styles: solid blue, dashed magenta, dash-dot green (drawn dashed).
const SERIES: [Series; 3] = [
    ("train loss", |p| p.train_loss, RGBColor(31, 119, 180), None),
    ("train acc", |p| p.train_acc, RGBColor(191, 0, 191), Some((8, 5))),
    ("test acc", |p| p.test_acc, RGBColor(0, 128, 0), Some((12, 4))),
];

/// The learning rate over the epochs, as steps (epoch e's rate from x = e - 1 to e), when it
/// changed from one epoch to another; d2l's constant rate is not drawn, as d2l draws none.
fn lr_steps(history: &History) -> Option<Vec<(f64, f64)>> {
    let rates: Vec<f64> = history.epochs.iter().filter_map(|e| e.lr).collect();
    if rates.windows(2).all(|w| w[0] == w[1]) {
        return None;
    }
    Some(rates.iter().enumerate().flat_map(|(e, &lr)| [(e.max(1) as f64, lr), ((e + 1) as f64, lr)]).collect())
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, history: &History, epochs: usize) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).plotted()?;
    let points = &history.points;
    let lr = lr_steps(history);
    let y_max = points
        .iter()
        .flat_map(|p| [p.train_loss, p.train_acc, p.test_acc])
        .flatten()
        .chain(lr.iter().flatten().map(|&(_, v)| v))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(45)
        .build_cartesian_2d(1f64..(epochs.max(2) as f64), 0f64..y_max)
        .plotted()?;
    chart.configure_mesh().x_desc("epoch").draw().plotted()?;
    for (label, value, color, dash) in SERIES {
        let data: Vec<(f64, f64)> = points.iter().filter_map(|p| value(p).map(|v| (p.x, v))).collect();
        let style = ShapeStyle::from(&color).stroke_width(2);
        let series = match dash {
            None => chart.draw_series(LineSeries::new(data, style)),
            Some((on, off)) => chart.draw_series(DashedLineSeries::new(data, on, off, style)),
        };
        series.plotted()?.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    if let Some(steps) = lr {
        let style = ShapeStyle::from(&RGBColor(255, 127, 14)).stroke_width(1);
        chart
            .draw_series(LineSeries::new(steps, style))
            .plotted()?
            .label("lr")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .plotted()?;
    root.present().plotted()?;
    Ok(())
}

/// Renders the training chart as SVG text.
pub fn training_svg(history: &History, epochs: usize) -> anyhow::Result<String> {
    ensure_font(); // plotters measures text with it even for SVG
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, (640, 420)).into_drawing_area(), history, epochs)?;
    Ok(svg)
}

/// Renders the training chart as a PNG file's bytes.
pub fn training_png(history: &History, epochs: usize) -> anyhow::Result<Vec<u8>> {
    ensure_font();
    let (w, h) = (640u32, 420u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    draw(BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area(), history, epochs)?;
    encode_png(&rgb, w, h)
}

/// Encodes an RGB buffer as PNG.
pub fn encode_png(rgb: &[u8], w: u32, h: u32) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(rgb)?;
    Ok(out)
}

/// One image of the prediction grid: its pixels as the network saw them before normalisation
/// (grey, or red, green and blue planes), its size, its two title lines (true and predicted
/// label), and whether the prediction was wrong (marked in red).
pub struct Labelled<'a> {
    pub pixels: &'a [u8],
    pub channels: usize,
    pub size: (usize, usize),
    pub title: [String; 2],
    pub wrong: bool,
}

/// The smallest and largest side an image is drawn at: d2l's 28x28 images three times over,
/// photos cut down to a cell a person sees whole.
const SMALLEST: usize = 84;
const LARGEST: usize = 160;
const TITLE: usize = 34;

/// The size an `h` x `w` image is drawn at, its aspect kept: small ones enlarged a whole number
/// of times (pixels stay sharp), large ones reduced to at most [`LARGEST`].
pub fn display_size(h: usize, w: usize) -> (usize, usize) {
    let side = h.max(w).max(1);
    if side < SMALLEST {
        let times = SMALLEST.div_ceil(side);
        (h * times, w * times)
    } else if side > LARGEST {
        ((h * LARGEST / side).max(1), (w * LARGEST / side).max(1))
    } else {
        (h, w)
    }
}

/// Where image `k` of a grid of `count` images of `size` is drawn: (x, y, width, height).
pub fn image_rect(count: usize, size: (usize, usize), k: usize) -> (usize, usize, usize, usize) {
    let (dh, dw) = display_size(size.0, size.1);
    let (per_row, cell_w, cell_h) = layout(count, (dh, dw));
    (k % per_row * cell_w + 4, k / per_row * cell_h + 4 + TITLE, dw, dh)
}

/// Images per row and the cell's width and height, for images drawn at `shown` (height, width).
fn layout(count: usize, shown: (usize, usize)) -> (usize, usize, usize) {
    let per_row = count.clamp(1, 9);
    (per_row, shown.1.max(SMALLEST) + 8, shown.0.max(SMALLEST) + TITLE + 8)
}

/// `im`'s planes at its display size: each pixel repeated when enlarged, Pillow's antialiased
/// bilinear resampling when reduced.
fn displayed(im: &Labelled) -> Vec<u8> {
    let (h, w) = im.size;
    let (dh, dw) = display_size(h, w);
    let planes = im.pixels.chunks(h * w).take(im.channels);
    if dh >= h {
        let times = dh / h.max(1);
        planes.flat_map(|plane| (0..dh * dw).map(move |at| plane[(at / dw / times) * w + at % dw / times])).collect()
    } else {
        let resize = Resize::new(h, w, dh, dw);
        planes.flat_map(|plane| resize.apply(plane)).collect()
    }
}

/// d2l's `predict_ch3` picture: images in rows of up to nine, each titled with its true and
/// predicted label; a wrong prediction's label and frame in red.
pub fn prediction_grid(images: &[Labelled]) -> anyhow::Result<Vec<u8>> {
    ensure_font();
    let shown = images.iter().fold((0, 0), |(h, w), im| {
        let (dh, dw) = display_size(im.size.0, im.size.1);
        (h.max(dh), w.max(dw))
    });
    let (per_row, cell_w, cell_h) = layout(images.len(), shown);
    let rows = images.len().div_ceil(per_row).max(1);
    let (w, h) = ((per_row * cell_w) as u32, (rows * cell_h) as u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).plotted()?;
        let red = RGBColor(200, 0, 0);
        for (k, im) in images.iter().enumerate() {
            let (x0, y0) = ((k % per_row * cell_w + 4) as i32, (k / per_row * cell_h + 4) as i32);
            for (line, text) in im.title.iter().enumerate() {
                let colour = if im.wrong && line == 1 { red } else { BLACK };
                let font = ("sans-serif", 12).into_font().color(&colour);
                root.draw(&Text::new(text.clone(), (x0, y0 + 15 * line as i32), font)).plotted()?;
            }
            let (dh, dw) = display_size(im.size.0, im.size.1);
            let pixels = displayed(im);
            let top = y0 + TITLE as i32;
            if im.wrong {
                let frame = [(x0 - 2, top - 2), (x0 + dw as i32 + 1, top + dh as i32 + 1)];
                root.draw(&Rectangle::new(frame, red.stroke_width(2))).plotted()?;
            }
            let plane = |c: usize, at: usize| pixels[c.min(im.channels - 1) * dh * dw + at];
            for at in 0..dh * dw {
                let px = (x0 + (at % dw) as i32, top + (at / dw) as i32);
                root.draw_pixel(px, &RGBColor(plane(0, at), plane(1, at), plane(2, at))).plotted()?;
            }
        }
        root.present().plotted()?;
    }
    encode_png(&rgb, w, h)
}
