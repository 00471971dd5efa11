"""SynthVI: a synthetic visible-infrared person dataset written in the real SYSU-MM01 / RegDB formats."""
