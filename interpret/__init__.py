"""castream interpret: saliency maps, their faithfulness and localisation scores, and the evaluation command."""
