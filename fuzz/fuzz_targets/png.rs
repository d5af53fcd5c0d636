//! The user's own images for `convnets predict --image`: decoding, then resizing to 28x28.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((grey, h, w)) = convnets::chart::decode_grey_png(data, "fuzz") {
        assert_eq!(grey.len(), h * w);
        if h > 0 && w > 0 {
            let out = convnets::data::Resize::new(h, w, 28, 28).apply(&grey);
            assert_eq!(out.len(), 784);
        }
    }
});
