//! PyTorch weight files as `convnets import` reads them: the zip or legacy container, the
//! restricted unpickler, the storages and the views into them (sizes, strides, offsets).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(tensors) = convnets::weights::read_pytorch_bytes(bytes, "fuzz", None) {
        for (_, t) in &tensors {
            assert!(t.defined());
        }
    }
});
