"""casdm's built-in components (casdm.components): their options, checks and labels, no torch.

One module per kind; importing it registers that kind's built-ins. Each component's `target`
names its implementation (casdm.architectures, casdm.metrics, casdm.samplers, casdm.data),
imported only when a model is built.
"""
