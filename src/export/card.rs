//! What an exported file says about the network's input and its origin: the preprocessing a
//! user must apply, the class names, how and how long it was trained.

use crate::train::CheckpointState;

/// What the exported file says about its input and its origin.
pub struct ModelCard {
    /// (C, H, W) the network takes.
    pub input: [i64; 3],
    /// How images become the input, for the input's description.
    pub preprocessing: String,
    /// `metadata_props`: class names, the run's configuration, anything a user needs.
    pub metadata: Vec<(String, String)>,
}

impl ModelCard {
    /// The input and metadata of a trained run: its data set's images as training fed them, its
    /// class names, where it stood and how it was trained.
    pub fn of_run(state: &CheckpointState) -> ModelCard {
        let config = &state.config;
        let side = config.eval_side() as i64;
        let kind = if config.in_channels == 1 { "grey images" } else { "RGB images (red, green, blue planes)" };
        let normalisation = match &config.normalize {
            Some(n) => format!("then per channel (x - mean) / std with mean {:?} and std {:?}", n.mean, n.std),
            None => "no normalisation".to_string(),
        };
        let preprocessing = format!(
            "float32 images, N x {c} x {side} x {side}: {kind} resized to {side}x{side} \
             (bilinear, as torchvision's Resize on a PIL image), then pixel / 255 (torchvision's ToTensor), \
             {normalisation}",
            c = config.in_channels
        );
        let classes = serde_json::to_string(&config.classes).unwrap_or_default();
        let mut metadata = vec![
            ("convnets.network".to_string(), config.net.clone()),
            ("convnets.classes".to_string(), classes),
            ("convnets.preprocessing".to_string(), preprocessing.clone()),
            ("convnets.epochs_trained".to_string(), state.epoch.to_string()),
            ("convnets.config".to_string(), serde_json::to_string(config).unwrap_or_default()),
        ];
        if let Some(last) = state.history.epochs.last() {
            metadata.push(("convnets.test_accuracy".to_string(), format!("{:.4}", last.test_acc)));
        }
        ModelCard { input: [config.in_channels, side, side], preprocessing, metadata }
    }
}
