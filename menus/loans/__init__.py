"""The loan service layer: the lifecycle machine, the service the channels and the admin API
call, and the daily jobs. Pure rules and persistence live in `core.loans`."""
