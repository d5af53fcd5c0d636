//! Weight files: parsing, then loading into a network (names, shapes, dtypes all hostile).
#![no_main]
use convnets::models::{NetConfig, Network};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static NET: Network = Network::new("lenet-bn", NetConfig::default(), tch::Device::Cpu).unwrap();
}

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = convnets::weights::parse_safetensors(data, "fuzz") {
        NET.with(|net| {
            let _ = convnets::weights::load_state_dict(&net.vs, "lenet-bn", &tensors, true);
        });
    }
});
