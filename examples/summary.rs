//! The chapter's tools on a network of the zoo, from the library: torchsummary's table,
//! torchinfo's tree and the per-layer shapes the notebook prints, all read off one traced pass.
//!
//! ```text
//! cargo run --release --example summary -- [NET]     (default resnet18; see `convnets models`)
//! ```

use convnets::models::{NetConfig, Network};
use convnets::summary;

fn main() -> anyhow::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "resnet18".into());
    let net = Network::new(&name, NetConfig::default(), tch::Device::Cpu)?;
    let input = net.default_input();
    let records = net.trace(&input)?;
    print!("{}", summary::torchsummary(&records, &input, -1));
    print!("{}", summary::torchinfo(&records, &input, net.info.batch_size, summary::TORCHINFO_DEPTH));
    print!("{}", summary::shapes(&records));
    Ok(())
}
