"""Caffe's command-line tools on the sec.caffe engine (installed as console scripts by setup.py)."""
