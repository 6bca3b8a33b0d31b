"""Defaults that the library and the command line share, in a module that imports nothing: `kronypt --help`
shows them without loading torch."""

AUTO_DTYPE = "auto"  # load_model / --dtype: the dtype the checkpoint was stored in
CALIBRATION_TOKENS = 32_768  # calibration text read for activation-aware fits, sensitivity and block importance
