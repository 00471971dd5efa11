"""Dataset readers (SYSU-MM01, RegDB, plain folders), the dataset checker and the SynthVI generator."""
