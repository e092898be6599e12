"""Inference-step speed per case of the chosen profile (`--b3-profile quick|b3|full`)."""


def test_inference(b3_bench, b3_inference_case):
    b3_bench(b3_inference_case)
