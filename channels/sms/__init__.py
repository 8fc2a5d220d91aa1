"""SMS banking over SMPP: the ESME (`smpp`), text encoding (`encoding`), delivery receipts
(`receipts`), the command grammar (`commands`) and the channel that ties them together
(`channel`: binds, the MO pipeline, the MT sender)."""
