//! `convnets models`, `summary` and `shapes`: the networks as the chapter shows them.

use tch::Device;

use super::args::{InputShape, NetShapeArgs, SummaryStyle};
use crate::error::usage;
use crate::models::{self, MODELS, NetConfig, Network, Origin};
use crate::summary;

/// Every network with its input and parameter count, the book's and torchvision's apart, as
/// a table or one JSON object each.
pub fn models(json: bool) -> anyhow::Result<()> {
    let groups = [
        (Origin::Book, "The chapter's networks, as d2l writes them (Fashion-MNIST: 1 channel, 10 classes):"),
        (
            Origin::Torchvision,
            "torchvision's networks, for its published ImageNet weights (`convnets import`, `train --pretrained`):",
        ),
    ];
    for (i, (origin, heading)) in groups.into_iter().enumerate() {
        if !json {
            if i > 0 {
                println!();
            }
            println!("{heading}");
            println!("{:<18} {:<11} {:>12}  description", "name", "input", "params");
        }
        for info in MODELS.iter().filter(|m| m.origin == origin) {
            let net = Network::from_info(info, info.default_config, Device::Cpu);
            let [c, h, w] = net.default_input();
            let input = format!("{c}x{h}x{w}");
            if json {
                let book = info.book.map(|b| {
                    serde_json::json!({
                        "loss": b.loss,
                        "train_acc": b.train_acc,
                        "test_acc": b.test_acc,
                        "test_acc_band": [b.test_acc_band.0, b.test_acc_band.1],
                    })
                });
                let line = serde_json::json!({
                    "name": info.name,
                    "origin": if origin == Origin::Book { "book" } else { "torchvision" },
                    "input": input,
                    "classes": net.config.num_classes,
                    "params": net.num_parameters(),
                    "batch_size": info.batch_size,
                    "lr": info.lr,
                    "epochs": info.epochs,
                    "book": book,
                });
                println!("{line}");
                continue;
            }
            println!(
                "{:<18} {:<11} {:>12}  {}",
                info.name,
                input,
                summary::thousands(net.num_parameters()),
                info.description
            );
        }
    }
    Ok(())
}

/// torchsummary's table or a torchinfo-like tree of `name`, down to `depth`.
pub fn summary(
    name: &str,
    input: Option<InputShape>,
    batch_size: Option<i64>,
    style: SummaryStyle,
    depth: Option<usize>,
    shape: &NetShapeArgs,
) -> anyhow::Result<()> {
    let (net, shape) = network_for(name, input, shape)?;
    if batch_size.is_some_and(|b| b == 0 || b < -1) {
        return Err(usage("--batch-size must be -1 (unspecified) or at least 1"));
    }
    if depth.is_some() && style != SummaryStyle::Tree {
        return Err(usage("--depth applies to --style tree (torchsummary's table lists every layer)"));
    }
    let records = net.trace(&shape)?;
    let text = match style {
        SummaryStyle::Torchsummary => summary::torchsummary(&records, &shape, batch_size.unwrap_or(-1)),
        SummaryStyle::Tree => {
            let batch = batch_size.filter(|&b| b > 0).unwrap_or(net.info.batch_size);
            summary::torchinfo(&records, &shape, batch, depth.unwrap_or(summary::TORCHINFO_DEPTH))
        }
    };
    print!("{text}");
    Ok(())
}

/// Each top-level layer's output shape for one input, as the notebook's loops print them.
pub fn shapes(name: &str, input: Option<InputShape>, shape: &NetShapeArgs) -> anyhow::Result<()> {
    let (net, shape) = network_for(name, input, shape)?;
    print!("{}", summary::shapes(&net.trace(&shape)?));
    Ok(())
}

/// Builds `name` for `input` (its channels set the network's) and checks the input fits.
fn network_for(name: &str, input: Option<InputShape>, shape: &NetShapeArgs) -> anyhow::Result<(Network, [i64; 3])> {
    let info = models::find(name).map_err(|e| usage(e.to_string()))?;
    let channels = match (input.and_then(|i| i.channels), shape.in_channels) {
        (Some(a), Some(b)) if a != b => {
            return Err(usage(format!("--input has {a} channels but --in-channels says {b}")));
        }
        (a, b) => a.or(b).unwrap_or(info.default_config.in_channels),
    };
    let classes = shape.classes.unwrap_or(info.default_config.num_classes);
    for (flag, value) in [("--in-channels", channels), ("--classes", classes)] {
        if value < 1 {
            return Err(usage(format!("{flag} must be at least 1, got {value}")));
        }
    }
    let net = Network::from_info(info, NetConfig { in_channels: channels, num_classes: classes }, Device::Cpu);
    let shape = match input {
        Some(i) => [channels, i.height, i.width],
        None => net.default_input(),
    };
    net.check_input(&shape).map_err(|e| usage(e.to_string()))?;
    Ok((net, shape))
}
