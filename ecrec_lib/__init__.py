"""ecrec: batch e-commerce search and recommendation on a pretrained language model.

Everything a job does lives here as importable, typed functions; nothing runs at import.
"""

__version__ = "0.1.0"
