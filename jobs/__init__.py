"""Entry points for `ray job submit` (and local runs): each is main(config) plus argument parsing."""
