//! safetensors files, read with the `safetensors` crate (validated, never trusted) and written
//! with it.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Device, Kind, Tensor};

use super::WeightsError;

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Parses safetensors bytes into named CPU tensors, sorted by name.
pub fn parse_safetensors(bytes: &[u8], file: &str) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let unreadable = |reason: String| WeightsError::Unreadable { file: file.to_string(), reason };
    let st = SafeTensors::deserialize(bytes).map_err(|e| unreadable(format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind =
            kind_of(view.dtype()).ok_or_else(|| unreadable(format!("{name}: unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Serializes named tensors as safetensors, with optional string metadata.
pub fn safetensors_bytes(
    named: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(named.len());
    for (name, tensor) in named {
        let t = tensor.to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind()).ok_or_else(|| anyhow::anyhow!("{name}: cannot store {:?}", t.kind()))?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut data, numel);
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, data));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, data)| Ok((name.clone(), TensorView::new(*dtype, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}
