"""Evaluation protocols (METHOD.md §8): SYSU-MM01 and RegDB, single runs and 10-trial averages."""
