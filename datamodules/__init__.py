"""Example LightningDataModules. Plain Lightning: nothing here imports `launcher`."""
