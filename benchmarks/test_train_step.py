"""Training-step speed per case of the chosen profile (`--b3-profile quick|b3|full`)."""


def test_train_step(b3_bench, b3_train_case):
    b3_bench(b3_train_case)
