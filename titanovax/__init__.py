"""The platform shell: settings, the `tx` CLI, the demo, local services and the stack."""
