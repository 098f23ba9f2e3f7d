"""Files written so that readers never see half of them: atomic folders and files, the writer lock, npz archives."""
