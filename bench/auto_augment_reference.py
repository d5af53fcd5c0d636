"""torchvision 0.26's automatic augmentation operations at fixed magnitudes, their magnitude
tables, and MixUp/CutMix/erasing at fixed parameters, as a small golden file for
tests/auto_augment.rs.

    /path/to/venv/bin/python bench/auto_augment_reference.py tests/golden/torchvision/auto_augment.json

Images are uint8 CHW tensors (what `transforms.v2` applies these operations to) given as hex.
"""

import json
import math
import sys

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._auto_augment import _AutoAugmentBase

torch.manual_seed(0)


def test_image(channels, height, width):
    """Smooth gradients, a bright square and noise, in 20..220 so that the contrast operations
    have room to act."""
    y = torch.arange(height, dtype=torch.float32).view(height, 1)
    x = torch.arange(width, dtype=torch.float32).view(1, width)
    planes = []
    for c in range(channels):
        plane = 20 + 140 * (x / width) * (1 - c / 4) + 60 * (y / height) * (c + 1) / 3
        plane = plane + torch.randint(0, 25, (height, width)).float()
        plane[height // 4 : height // 2, width // 3 : width // 2] = 210 - 30 * c
        planes.append(plane)
    return torch.stack(planes).clamp(0, 255).to(torch.uint8)


def hex_of(tensor):
    return tensor.contiguous().numpy().tobytes().hex()


apply_op = _AutoAugmentBase._apply_image_or_video_transform
NEAREST, BILINEAR = v2.InterpolationMode.NEAREST, v2.InterpolationMode.BILINEAR
base = v2.RandAugment()

images = {
    "colour": test_image(3, 18, 23),
    "square": test_image(3, 16, 16),
    "grey": test_image(1, 17, 21),
}
cases = [
    ("Identity", 0.0),
    ("ShearX", 0.27), ("ShearX", -0.09), ("ShearX", 0.99),
    ("ShearY", 0.18), ("ShearY", -0.3),
    ("TranslateX", 6.0), ("TranslateX", -4.0),
    ("TranslateY", 3.0), ("TranslateY", -7.0),
    ("Rotate", 27.0), ("Rotate", -13.5), ("Rotate", 90.0), ("Rotate", -90.0), ("Rotate", 180.0), ("Rotate", 135.0),
    ("Brightness", 0.63), ("Brightness", -0.45),
    ("Color", 0.81), ("Color", -0.72),
    ("Contrast", 0.54), ("Contrast", -0.9),
    ("Sharpness", 0.9), ("Sharpness", -0.66),
    ("Posterize", 4.0), ("Posterize", 6.0), ("Posterize", 0.0),
    ("Solarize", 0.7), ("Solarize", 0.3),
    ("AutoContrast", 0.0), ("Equalize", 0.0), ("Invert", 0.0),
]
ops = []
for image_name, image in images.items():
    for op, magnitude in cases:
        for mode in (NEAREST, BILINEAR):
            geometric = op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
            if mode == BILINEAR and not geometric:
                continue
            out = apply_op(base, image, op, magnitude, interpolation=mode, fill={"others": None})
            ops.append(
                dict(image=image_name, op=op, magnitude=magnitude, bilinear=mode == BILINEAR, output=hex_of(out))
            )


def table(space, bins, height, width):
    out = {}
    for name, (fn, signed) in space.items():
        values = fn(bins, height, width)
        out[name] = dict(signed=signed, values=None if values is None else [float(v) for v in values])
    return out


magnitudes = dict(
    ra=table(v2.RandAugment._AUGMENTATION_SPACE, 31, 18, 23),
    ta_wide=table(v2.TrivialAugmentWide._AUGMENTATION_SPACE, 31, 18, 23),
    imagenet=table(v2.AutoAugment._AUGMENTATION_SPACE, 10, 18, 23),
    augmix=table(v2.AugMix._AUGMENTATION_SPACE, 10, 18, 23),
)
policies = {
    name: [[list(step) for step in pair] for pair in v2.AutoAugment(policy)._policies]
    for name, policy in [
        ("imagenet", v2.AutoAugmentPolicy.IMAGENET),
        ("cifar10", v2.AutoAugmentPolicy.CIFAR10),
        ("svhn", v2.AutoAugmentPolicy.SVHN),
    ]
}

# MixUp and CutMix at a fixed lambda and box, erasing at a fixed box.
batch = torch.rand(4, 3, 6, 7)
labels = torch.tensor([0, 3, 1, 2])
mixup = v2.MixUp(alpha=0.2, num_classes=5)
mixed = [
    mixup.transform(t, dict(lam=0.3, labels=labels, batch_size=4)) for t in (batch, labels)
]
cutmix = v2.CutMix(alpha=1.0, num_classes=5)
box = (2, 1, 6, 4)  # x1, y1, x2, y2
lam_adjusted = 1.0 - (box[2] - box[0]) * (box[3] - box[1]) / (7 * 6)
cut = [
    cutmix.transform(t, dict(box=box, lam_adjusted=lam_adjusted, labels=labels, batch_size=4)) for t in (batch, labels)
]
erased = F.erase(batch[0], 1, 2, 3, 4, torch.tensor(0.0))


def floats(t):
    return [float(v) for v in t.flatten()]


json.dump(
    dict(
        torchvision=__import__("torchvision").__version__,
        images={name: dict(shape=list(image.shape), pixels=hex_of(image)) for name, image in images.items()},
        ops=ops,
        magnitudes=magnitudes,
        policies=policies,
        batch=dict(shape=list(batch.shape), values=floats(batch), labels=labels.tolist()),
        mixup=dict(lam=0.3, images=floats(mixed[0]), labels=floats(mixed[1])),
        cutmix=dict(box=list(box), lam=lam_adjusted, images=floats(cut[0]), labels=floats(cut[1])),
        erase=dict(top=1, left=2, height=3, width=4, image=floats(erased)),
    ),
    open(sys.argv[1], "w"),
    separators=(",", ":"),
)
print(f"{len(ops)} operations written to {sys.argv[1]}")
