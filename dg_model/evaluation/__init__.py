"""Evaluation: HumanEval infilling tasks and scoring, and the sandbox that runs a candidate against the tests."""
