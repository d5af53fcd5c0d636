//! Files `torch.save` writes, read without libtorch's unpickler (which refuses the
//! `OrderedDict` that `state_dict()` returns) and without running anything: the zip format
//! (PyTorch 1.6 on: `ARCHIVE/data.pkl` and one entry per storage, `ARCHIVE/data/KEY`) and the
//! legacy one (a magic number, the pickle, the storage keys, then each storage as its element
//! count and bytes). State dicts, and checkpoints holding one under a key (`--key`).

use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;

use tch::Tensor;

use super::WeightsError;
use super::pickle::{self, TensorRef, Value};

/// The legacy format's first pickle: this number.
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// The largest entry a zip's data may unpack to (a zip bomb stops here).
const MAX_ENTRY_BYTES: u64 = 1 << 34;

/// The tensors of the state dict in `bytes` (the file `file`), by name, sorted: the file's
/// top-level dict, or the dict under `key` (a checkpoint's `model`, say).
pub fn read(bytes: &[u8], file: &str, key: Option<&str>) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let unreadable = |reason: String| WeightsError::Unreadable { file: file.to_string(), reason };
    let (value, storages) = if bytes.starts_with(b"PK\x03\x04") { zip(bytes) } else { legacy(bytes) }
        .map_err(|reason| unreadable(format!("not a PyTorch file convnets can read: {reason}")))?;
    let tensors = state_dict(&value, key).map_err(unreadable)?;
    let mut made = HashMap::new();
    let mut named = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let t = materialize(&tensor, &storages, &mut made).map_err(|reason| unreadable(format!("{name}: {reason}")))?;
        named.push((name, t));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named)
}

/// Each storage's bytes, by key.
type Storages = HashMap<String, Rc<Vec<u8>>>;

fn zip(bytes: &[u8]) -> Result<(Value, Storages), String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("a broken zip ({e})"))?;
    let names: Vec<String> = archive
        .file_names()
        .map(|name| name.map(|name| name.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a broken zip ({e})"))?;
    let pickle_name = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or("a zip without ARCHIVE/data.pkl: not written by torch.save")?
        .clone();
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let mut entry = |name: &str| -> Result<Vec<u8>, String> {
        let file = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        if file.size() > MAX_ENTRY_BYTES {
            return Err(format!("{name} unpacks to {} bytes", file.size()));
        }
        let mut data = Vec::with_capacity(file.size() as usize);
        file.take(MAX_ENTRY_BYTES).read_to_end(&mut data).map_err(|e| format!("{name}: {e}"))?;
        Ok(data)
    };
    if names.contains(&format!("{prefix}byteorder")) {
        let order = entry(&format!("{prefix}byteorder"))?;
        if order.trim_ascii() != b"little" {
            return Err(format!(
                "byte order {:?}; convnets reads little-endian files",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let data = entry(&pickle_name)?;
    let (value, _) = pickle::read(&data).map_err(|e| e.to_string())?;
    let mut storages = Storages::new();
    for tensor in tensors_in(&value) {
        let key = &tensor.storage.key;
        if !storages.contains_key(key) {
            let bytes = entry(&format!("{prefix}data/{key}")).map_err(|e| format!("storage {key}: {e}"))?;
            storages.insert(key.clone(), Rc::new(bytes));
        }
    }
    Ok((value, storages))
}

fn legacy(bytes: &[u8]) -> Result<(Value, Storages), String> {
    let mut at = 0;
    let mut next = |what: &str| -> Result<Value, String> {
        let (value, used) = pickle::read(&bytes[at..]).map_err(|e| format!("{what}: {e}"))?;
        at += used;
        Ok(value)
    };
    let magic = next("the magic number")?;
    let is_magic = match &magic {
        Value::Long(digits) if digits.len() <= 16 => {
            let mut full = [0u8; 16];
            full[..digits.len()].copy_from_slice(digits);
            u128::from_le_bytes(full) == LEGACY_MAGIC
        }
        _ => false,
    };
    if !is_magic {
        return Err("neither a zip nor torch.save's legacy format".into());
    }
    next("the protocol version")?;
    if let Value::Dict(info) = next("the system information")? {
        let big = info
            .borrow()
            .iter()
            .any(|(k, v)| matches!((k, v), (Value::Str(k), Value::Bool(false)) if &**k == "little_endian"));
        if big {
            return Err("a file written on a big-endian machine; convnets reads little-endian files".into());
        }
    }
    let value = next("the data")?;
    let Value::List(keys) = next("the storage keys")? else { return Err("the storage keys are not a list".into()) };
    let refs = tensors_in(&value);
    let mut storages = Storages::new();
    for key in keys.borrow().iter() {
        let Value::Str(key) = key else { return Err("a storage key that is not a string".into()) };
        let kind = refs
            .iter()
            .find(|t| *t.storage.key == **key)
            .map(|t| t.storage.kind)
            .ok_or_else(|| format!("storage {key}, which no tensor uses"))?;
        let header = bytes.get(at..at + 8).ok_or_else(|| format!("the file ends before storage {key}"))?;
        let numel = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        let length = numel
            .checked_mul(kind.elt_size_in_bytes() as u64)
            .filter(|&n| n <= (bytes.len() - at - 8) as u64)
            .ok_or_else(|| format!("storage {key} claims {numel} values, more than the file holds"))?;
        storages.insert(key.to_string(), Rc::new(bytes[at + 8..at + 8 + length as usize].to_vec()));
        at += 8 + length as usize;
    }
    Ok((value, storages))
}

/// Every tensor a value holds, at any depth.
fn tensors_in(value: &Value) -> Vec<TensorRef> {
    let mut found = Vec::new();
    let mut pending = vec![value.clone()];
    while let Some(value) = pending.pop() {
        match value {
            Value::Tensor(t) => found.push((*t).clone()),
            Value::Tuple(items) => pending.extend(items.iter().cloned()),
            Value::List(items) => pending.extend(items.borrow().iter().cloned()),
            Value::Dict(items) => pending.extend(items.borrow().iter().map(|(_, v)| v.clone())),
            _ => {}
        }
    }
    found
}

/// The state dict: the named tensors of the top-level dict, or of the dict under `key`. A
/// checkpoint whose tensors are one level down names the keys to choose from.
fn state_dict(value: &Value, key: Option<&str>) -> Result<Vec<(String, TensorRef)>, String> {
    let Value::Dict(top) = value else { return Err("the file holds no dict of tensors (no state_dict)".into()) };
    let top = top.borrow();
    let keys = || top.iter().filter_map(|(k, _)| if let Value::Str(k) = k { Some(k.to_string()) } else { None });
    let dict = match key {
        Some(wanted) => {
            let found = top.iter().find(|(k, _)| matches!(k, Value::Str(k) if &**k == wanted));
            match found {
                Some((_, Value::Dict(inner))) => inner.clone(),
                Some(_) => return Err(format!("--key {wanted}: not a dict of tensors")),
                None => {
                    return Err(format!(
                        "--key {wanted}: no such key; the file's are {}",
                        keys().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        None => {
            let tensors = named_tensors(&top);
            if !tensors.is_empty() {
                return Ok(tensors);
            }
            let holding: Vec<String> = top
                .iter()
                .filter_map(|(k, v)| match (k, v) {
                    (Value::Str(k), Value::Dict(inner)) if !named_tensors(&inner.borrow()).is_empty() => {
                        Some(k.to_string())
                    }
                    _ => None,
                })
                .collect();
            return Err(match holding.len() {
                0 => "the file's dict holds no tensors".into(),
                _ => format!(
                    "the file's tensors are under {}: choose with --key {} (a checkpoint holds the state_dict under a key)",
                    holding.join(", "),
                    holding[0]
                ),
            });
        }
    };
    let tensors = named_tensors(&dict.borrow());
    match tensors.is_empty() {
        true => Err(format!("--key {}: a dict without tensors", key.unwrap_or_default())),
        false => Ok(tensors),
    }
}

/// The entries of `dict` that map a string to a tensor (a state dict's other values, such as
/// a version number, are left aside).
fn named_tensors(dict: &[(Value, Value)]) -> Vec<(String, TensorRef)> {
    dict.iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Some((k.to_string(), (**t).clone())),
            _ => None,
        })
        .collect()
}

/// The tensor `t` describes, a view of its storage (made once per storage, in `made`), after
/// checking that the storage holds every value the tensor's size, stride and offset reach.
fn materialize(t: &TensorRef, storages: &Storages, made: &mut HashMap<String, Tensor>) -> Result<Tensor, String> {
    let key = &t.storage.key;
    let bytes = storages.get(key).ok_or_else(|| format!("storage {key} is missing"))?;
    let size = t.storage.kind.elt_size_in_bytes();
    if !bytes.len().is_multiple_of(size) {
        return Err(format!("storage {key} holds {} bytes, not a whole number of {size}-byte values", bytes.len()));
    }
    let numel = (bytes.len() / size) as i64;
    let empty = t.size.contains(&0);
    // The last value the view reads, computed without overflow.
    let reach = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |end, (&n, &s)| end.checked_add((n - 1).max(0).checked_mul(s)?));
    match reach {
        Some(last) if empty || last < numel => {}
        _ => {
            return Err(format!(
                "its size {:?} (stride {:?}, offset {}) reaches past storage {key}, which holds {numel} value(s)",
                t.size, t.stride, t.offset
            ));
        }
    }
    // A view may not hold more values than its storage (an expanded tensor, stride 0, would):
    // copied out, it would take that much memory.
    let view_numel = t.size.iter().try_fold(1i64, |n, &d| n.checked_mul(d));
    if view_numel.is_none_or(|n| n > numel) {
        return Err(format!(
            "its size {:?} holds more values than storage {key}'s {numel} (an expanded tensor): save a copy \
             (tensor.contiguous()) instead",
            t.size
        ));
    }
    if !made.contains_key(key) {
        let storage = Tensor::f_from_data_size(bytes, &[numel], t.storage.kind).map_err(|e| e.to_string())?;
        made.insert(key.clone(), storage);
    }
    let view = made[key].f_as_strided(&t.size, &t.stride, t.offset).map_err(|e| e.to_string())?;
    view.f_contiguous().map_err(|e| e.to_string())
}
