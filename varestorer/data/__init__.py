"""Training data: reading photos robustly (:mod:`.images`), preparing a captioned, sharded
``datasets`` dataset from a folder (:mod:`.prepare`, :mod:`.captions`), loading it for training
(:mod:`.dataset`), and the tiny built-in set of scikit-image photos (:mod:`.samples`)."""
