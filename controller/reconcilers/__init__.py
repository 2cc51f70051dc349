"""dpf.controller.reconcilers: one module per CR kind; `base.default_reconcilers()` is the registry."""
