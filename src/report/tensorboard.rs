//! TensorBoard event files, so that `tensorboard --logdir runs` shows every run: TFRecord
//! framing (length, masked CRC-32C of the length, payload, masked CRC-32C of the payload)
//! around `Event` protobuf messages holding scalar summaries, encoded by prost.
//!
//! A run's file is always the function of its history: it is written anew, with every point
//! the history holds, when a run starts or resumes, and then grows as points arrive. A run
//! killed mid-epoch may have logged points past its last checkpoint; the resumed run's file
//! replaces that one, so its curves continue without repeating or contradicting themselves.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::atomic::write_atomic;
use crate::train::{EpochRecord, History, Observer, Point, RunStart};

/// `Event` (tensorflow/core/util/event.proto), the fields written here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5")]
    pub what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    /// The first event of a file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `Summary` (tensorflow/core/framework/summary.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `Summary.Value` with a scalar (`simple_value`, always written, even when 0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// The scalar tags convnets writes.
pub const TRAIN_LOSS: &str = "train/loss";
pub const TRAIN_ACCURACY: &str = "train/accuracy";
pub const TEST_ACCURACY: &str = "test/accuracy";
pub const LEARNING_RATE: &str = "learning_rate";
pub const EXAMPLES_PER_SEC: &str = "examples_per_sec";

const FILE_PREFIX: &str = "events.out.tfevents.";

/// TFRecord's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: the framed, checksummed `payload`.
fn record(payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend(length);
    out.extend(masked_crc(&length).to_le_bytes());
    out.extend(payload);
    out.extend(masked_crc(payload).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn scalars(step: i64, values: &[(&str, f64)]) -> Vec<u8> {
    let value = values.iter().map(|&(tag, v)| SummaryValue { tag: tag.into(), simple_value: Some(v as f32) }).collect();
    record(&Event { wall_time: now(), step, what: Some(EventWhat::Summary(Summary { value })) }.encode_to_vec())
}

/// The event file of one run directory.
pub struct EventWriter {
    file: File,
    path: PathBuf,
    /// Training steps per epoch: TensorBoard's step is the global batch count.
    batches_per_epoch: usize,
}

impl EventWriter {
    /// Starts `dir`'s event file anew with every point and epoch of `history` (see the module's
    /// comment), and removes the run's older event files once the new one is complete.
    pub fn create(dir: &Path, history: &History, batches_per_epoch: usize) -> std::io::Result<Self> {
        let host =
            std::fs::read_to_string("/etc/hostname").map_or_else(|_| "localhost".into(), |h| h.trim().to_string());
        let path = dir.join(format!("{FILE_PREFIX}{}.{host}.convnets", now() as u64));
        let mut bytes = record(
            &Event { wall_time: now(), step: 0, what: Some(EventWhat::FileVersion("brain.Event:2".into())) }
                .encode_to_vec(),
        );
        for point in &history.points {
            bytes.extend(point_record(point, global_step(point.x, batches_per_epoch)));
        }
        for epoch in &history.epochs {
            bytes.extend(epoch_record(epoch, global_step(epoch.epoch as f64, batches_per_epoch)));
        }
        write_atomic(&path, &bytes)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(FILE_PREFIX) && entry.path() != path {
                std::fs::remove_file(entry.path())?;
            }
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(EventWriter { file, path, batches_per_epoch })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one point of d2l's chart (train loss and accuracy, or test accuracy).
    pub fn point(&mut self, point: &Point) -> std::io::Result<()> {
        self.file.write_all(&point_record(point, global_step(point.x, self.batches_per_epoch)))?;
        self.file.flush()
    }

    /// Logs an epoch's learning rate and examples/sec.
    pub fn epoch(&mut self, epoch: &EpochRecord) -> std::io::Result<()> {
        self.file.write_all(&epoch_record(epoch, global_step(epoch.epoch as f64, self.batches_per_epoch)))?;
        self.file.flush()
    }
}

/// Logs a run to its directory's event file (see the module's comment).
#[derive(Default)]
pub struct EventLog {
    writer: Option<EventWriter>,
}

impl EventLog {
    fn writer(&mut self) -> anyhow::Result<&mut EventWriter> {
        self.writer.as_mut().ok_or_else(|| anyhow::anyhow!("TensorBoard events logged before the run started"))
    }
}

impl Observer for EventLog {
    fn started(&mut self, start: &RunStart) -> anyhow::Result<()> {
        let writer = EventWriter::create(start.dir, start.history, start.batches_per_epoch)
            .map_err(|e| anyhow::anyhow!("cannot write TensorBoard events in {}: {e}", start.dir.display()))?;
        self.writer = Some(writer);
        Ok(())
    }

    fn point(&mut self, point: &Point) -> anyhow::Result<()> {
        let writer = self.writer()?;
        writer.point(point).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", writer.path().display()))
    }

    fn epoch(&mut self, record: &EpochRecord, _history: &History) -> anyhow::Result<()> {
        let writer = self.writer()?;
        writer.epoch(record).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", writer.path().display()))
    }
}

/// TensorBoard's step for the chart's x (epochs, fractional within one): the global batch count.
fn global_step(x: f64, batches_per_epoch: usize) -> i64 {
    (x * batches_per_epoch as f64).round() as i64
}

fn point_record(point: &Point, step: i64) -> Vec<u8> {
    let values: Vec<(&str, f64)> =
        [(TRAIN_LOSS, point.train_loss), (TRAIN_ACCURACY, point.train_acc), (TEST_ACCURACY, point.test_acc)]
            .into_iter()
            .filter_map(|(tag, v)| Some((tag, v?)))
            .collect();
    scalars(step, &values)
}

fn epoch_record(epoch: &EpochRecord, step: i64) -> Vec<u8> {
    let examples_per_sec = epoch.examples as f64 / epoch.step_seconds.max(f64::MIN_POSITIVE);
    let mut values = vec![(EXAMPLES_PER_SEC, examples_per_sec)];
    if let Some(lr) = epoch.lr {
        values.insert(0, (LEARNING_RATE, lr));
    }
    scalars(step, &values)
}

/// Every scalar of an event file as (step, tag, value), checking each record's checksums: what
/// TensorBoard reads back.
pub fn read_scalars(path: &Path) -> Result<Vec<(i64, String, f32)>, String> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rest = bytes.as_slice();
    let mut scalars = Vec::new();
    while !rest.is_empty() {
        let bad = |what: &str| format!("{}: {what} at byte {}", path.display(), bytes.len() - rest.len());
        if rest.len() < 12 {
            return Err(bad("a truncated record header"));
        }
        let (length, tail) = rest.split_at(8);
        let length_crc = u32::from_le_bytes(tail[..4].try_into().unwrap_or_default());
        if masked_crc(length) != length_crc {
            return Err(bad("a record length with a wrong checksum"));
        }
        let n = u64::from_le_bytes(length.try_into().unwrap_or_default()) as usize;
        let tail = &tail[4..];
        if tail.len() < n + 4 {
            return Err(bad("a truncated record"));
        }
        let (payload, tail) = tail.split_at(n);
        if masked_crc(payload) != u32::from_le_bytes(tail[..4].try_into().unwrap_or_default()) {
            return Err(bad("a record with a wrong checksum"));
        }
        let event = Event::decode(payload).map_err(|e| bad(&format!("an undecodable event ({e})")))?;
        if let Some(EventWhat::Summary(summary)) = event.what {
            for value in summary.value {
                if let Some(v) = value.simple_value {
                    scalars.push((event.step, value.tag, v));
                }
            }
        }
        rest = &tail[4..];
    }
    Ok(scalars)
}

/// The run's event file (the newest, should there be several).
pub fn event_file(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(FILE_PREFIX))
        .map(|e| e.path())
        .collect();
    files.sort();
    files.pop()
}
