//! Image files as the product reads them (an image folder's photos, `predict --image`): the
//! decoder (zune-jpeg for JPEGs, `image` for PNGs and the rest), then grey conversion, a crop and
//! a resize as the training transforms make them.
#![no_main]
use convnets::data::{Pipeline, Transform, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // libFuzzer's hook aborts on every panic; a decoder's panic that the product catches and
    // reports as an unreadable image is not a crash.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !convnets::error::panic_is_caught() {
                abort(info)
            }
        }));
    });
    if let Ok(rgb) = decode::decode_bytes(bytes) {
        assert_eq!(rgb.pixels.len(), 3 * rgb.height * rgb.width);
        let grey = decode::to_grey(&rgb);
        assert_eq!(grey.pixels.len(), rgb.height * rgb.width);
        if rgb.height > 0 && rgb.width > 0 {
            let train = Pipeline { transforms: vec![Transform::RandomResizedCrop(24), Transform::RandomHorizontalFlip] };
            let out = train.apply(rgb, 0, 0, 0);
            assert_eq!((out.channels, out.height, out.width, out.pixels.len()), (3, 24, 24, 3 * 24 * 24));
        }
    }
});
