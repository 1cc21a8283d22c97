"""The protocols as codecs of the one request pipeline (``service.serving.Serving.handle``).

Each reads its body into images or tensors and says what to answer (``read``), and turns the model's outputs
into its answer (``encode``): ``classify`` for ``POST /classify``, ``v2`` for the Open Inference Protocol.
"""
