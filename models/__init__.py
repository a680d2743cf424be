"""Example LightningModules. Plain Lightning: nothing here imports `launcher`."""
