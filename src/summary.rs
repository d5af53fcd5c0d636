//! Renders a traced forward pass as the notebook shows networks: torchsummary 1.5.1's table,
//! a torchinfo 1.8-like tree, and the seed's per-layer shape printout.

use std::fmt::Write;

use crate::nn::Record;

/// `1234567` as `1,234,567`, Python's `"{:,}"`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A shape as Python prints a list, the batch dimension replaced by `batch`.
fn shape_list(shape: &[i64], batch: i64) -> String {
    let dims: Vec<String> =
        std::iter::once(batch).chain(shape.iter().skip(1).copied()).map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

const MIB: f64 = 1024.0 * 1024.0;

/// The table `torchsummary.summary(net, input, batch_size)` prints, byte for byte, with one
/// deliberate difference: parameters of layers written from tensor operations (the
/// from-scratch batch norm's gamma and beta) are counted, where torchsummary counts only
/// attributes named `weight` and `bias`.
///
/// `records` come from a traced forward pass; `input` is (C, H, W); `batch_size` is `-1` for
/// torchsummary's default.
pub fn torchsummary(records: &[Record], input: &[i64], batch_size: i64) -> String {
    let rule = |c: char| c.to_string().repeat(64);
    let mut out = String::new();
    let _ = writeln!(out, "{}", rule('-'));
    let _ = writeln!(out, "{:>20}  {:>25} {:>15}", "Layer (type)", "Output Shape", "Param #");
    let _ = writeln!(out, "{}", rule('='));

    // torchsummary hooks every module but containers and numbers rows as the calls finish,
    // so a block (Residual, Inception) follows its children.
    let mut rows: Vec<&Record> = records.iter().filter(|r| !r.container).collect();
    rows.sort_by_key(|r| r.finished);
    let (mut total_params, mut total_output) = (0i64, 0i64);
    for (i, r) in rows.iter().enumerate() {
        let name = format!("{}-{}", r.type_name, i + 1);
        let shape = shape_list(&r.output, batch_size);
        let _ = writeln!(out, "{:>20}  {:>25} {:>15}", name, shape, thousands(r.params));
        total_params += r.params;
        total_output += batch_size * r.output.iter().skip(1).product::<i64>();
    }
    let input_elems: i64 = input.iter().product::<i64>() * batch_size;
    let input_mb = (input_elems as f64 * 4.0 / MIB).abs();
    let output_mb = (2.0 * total_output as f64 * 4.0 / MIB).abs();
    let params_mb = (total_params as f64 * 4.0 / MIB).abs();
    let total_mb = input_mb + output_mb + params_mb;

    let _ = writeln!(out, "{}", rule('='));
    let _ = writeln!(out, "Total params: {}", thousands(total_params));
    let _ = writeln!(out, "Trainable params: {}", thousands(total_params));
    let _ = writeln!(out, "Non-trainable params: 0");
    let _ = writeln!(out, "{}", rule('-'));
    let _ = writeln!(out, "Input size (MB): {input_mb:.2}");
    let _ = writeln!(out, "Forward/backward pass size (MB): {output_mb:.2}");
    let _ = writeln!(out, "Params size (MB): {params_mb:.2}");
    let _ = writeln!(out, "Estimated Total Size (MB): {total_mb:.2}");
    let _ = writeln!(out, "{}", rule('-'));
    out
}

/// torchinfo's default `depth`: rows below it are folded into their ancestor at this depth.
pub const TORCHINFO_DEPTH: usize = 3;

/// A nested tree in the style of `torchinfo.summary(net, (B, C, H, W), depth=depth,
/// col_names=(output_size, num_params, mult_adds))`: depth-indexed rows, output shapes, own
/// parameters, mult-adds, and the same totals (sizes in MB of 10^6 bytes, as torchinfo counts
/// them). Rows deeper than `depth` are left out; a block at `depth` then shows what it holds
/// (its parameters and its leaves' mult-adds), as torchinfo folds them.
pub fn torchinfo(records: &[Record], input: &[i64], batch_size: i64, depth: usize) -> String {
    let rule = "=".repeat(115);
    let mut out = String::new();
    let row = |out: &mut String, cols: [&str; 4]| {
        let line = format!("{:<40} {:<25} {:<25} {:<25}", cols[0], cols[1], cols[2], cols[3]);
        let _ = writeln!(out, "{}", line.trim_end());
    };
    let dashed = |n: i64| if n == 0 { "--".to_string() } else { thousands(n) };
    let _ = writeln!(out, "{rule}");
    row(&mut out, ["Layer (type:depth-idx)", "Output Shape", "Param #", "Mult-Adds"]);
    let _ = writeln!(out, "{rule}");

    let mut index_at_depth: Vec<usize> = Vec::new();
    let (mut total_params, mut total_mult_adds, mut leaf_output) = (0i64, 0i64, 0i64);
    for (k, r) in records.iter().enumerate() {
        let mult_adds = r.mult_adds * batch_size;
        total_params += r.params;
        total_mult_adds += mult_adds;
        // torchinfo keeps activations (x2 for their gradients) only of leaves with parameters.
        if !r.has_children && r.params > 0 {
            leaf_output += batch_size * r.output.iter().skip(1).product::<i64>();
        }
        if r.depth > depth {
            continue;
        }
        let name = if r.depth == 0 {
            r.type_name.to_string()
        } else {
            if index_at_depth.len() < r.depth {
                index_at_depth.resize(r.depth, 0);
            }
            index_at_depth[r.depth - 1] += 1;
            let branch =
                if r.depth == 1 { "├─".to_string() } else { format!("{}└─", "│    ".repeat(r.depth - 1)) };
            format!("{branch}{}: {}-{}", r.type_name, r.depth, index_at_depth[r.depth - 1])
        };
        // A container that was never called has no output: torchinfo prints "--".
        let shape = if r.called { shape_list(&r.output, batch_size) } else { "--".to_string() };
        let (params, mult_adds) = if r.depth == depth && r.has_children {
            // Everything below the row: all its parameters, its leaves' mult-adds.
            let below = records[k + 1..].iter().take_while(|d| d.depth > r.depth);
            below.fold((r.params, 0), |(p, m), d| {
                (p + d.params, if d.has_children { m } else { m + d.mult_adds * batch_size })
            })
        } else {
            (r.params, mult_adds)
        };
        row(&mut out, [&name, &shape, &dashed(params), &dashed(mult_adds)]);
    }
    let (unit, scale) = match total_mult_adds {
        n if n >= 1_000_000_000 => ("GIGABYTES", 1e9),
        n if n >= 1_000_000 => ("MEGABYTES", 1e6),
        n if n >= 1_000 => ("KILOBYTES", 1e3),
        _ => ("NONE", 1.0),
    };
    let mb = 1e6;
    let input_mb = (input.iter().product::<i64>() * batch_size) as f64 * 4.0 / mb;
    let output_mb = 2.0 * leaf_output as f64 * 4.0 / mb;
    let params_mb = total_params as f64 * 4.0 / mb;
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(out, "Total params: {}", thousands(total_params));
    let _ = writeln!(out, "Trainable params: {}", thousands(total_params));
    let _ = writeln!(out, "Non-trainable params: 0");
    let _ = writeln!(out, "Total mult-adds (Units.{unit}): {:.2}", total_mult_adds as f64 / scale);
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(out, "Input size (MB): {input_mb:.2}");
    let _ = writeln!(out, "Forward/backward pass size (MB): {output_mb:.2}");
    let _ = writeln!(out, "Params size (MB): {params_mb:.2}");
    let _ = writeln!(out, "Estimated Total Size (MB): {:.2}", input_mb + output_mb + params_mb);
    let _ = writeln!(out, "{rule}");
    out
}

/// One line per top-level layer, as the seed's `for layer in net: X = layer(X); print(...)`
/// loops print them for a batch of one.
pub fn shapes(records: &[Record]) -> String {
    records
        .iter()
        .filter(|r| r.depth == 1)
        .map(|r| {
            let dims: Vec<String> =
                std::iter::once(1).chain(r.output.iter().skip(1).copied()).map(|d| d.to_string()).collect();
            format!("{} output shape:\t torch.Size([{}])\n", r.type_name, dims.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_groups_digits_like_python() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(46_764_746), "46,764,746");
        assert_eq!(thousands(-1234), "-1,234");
    }
}
