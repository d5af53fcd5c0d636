//! The loss d2l trains with.

use tch::{Kind, Tensor};

/// `nn.CrossEntropyLoss(label_smoothing=...)` of logits and class indices, or of class
/// probabilities (N, C) as MixUp and CutMix make them (mean over the batch); without smoothing,
/// of indices, d2l's log-softmax and NLL, as before recipes existed.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor, tch::TchError> {
    if label_smoothing > 0.0 || labels.is_floating_point() {
        return logits.f_cross_entropy_loss(labels, None::<Tensor>, tch::Reduction::Mean, -100, label_smoothing);
    }
    logits.f_log_softmax(-1, Kind::Float)?.f_nll_loss(labels, None::<Tensor>, tch::Reduction::Mean, -100)
}
