"""Sub-commands of ``aitask`` that live in their own modules (``add_parser`` + ``run``)."""
