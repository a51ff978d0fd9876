"""The label convention that datasets, the loss, the metrics and label maps share.

Class ids are 0..K-1; ``IGNORE`` marks a pixel without a label, which is never learned
from and never scored. Every dataset stores its labels this way (a source's own "no
label" value is mapped to ``IGNORE`` when the dataset is built), and written label maps
use it as their nodata value.
"""

IGNORE = 255
