"""What happens before step 1: the registry checks and the pieces a config builds (`build`), the machine's rates
(`cluster`, `probe`, `roofline`), whether the run fits its machines (`resources`) and what it would cost
(`simulate`). Below the loop (`disttrain.engine`), which calls into it; it never starts processes."""
