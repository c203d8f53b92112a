"""casdm: the model library: UNet, schedules, architectures, metric losses, training, samplers."""
