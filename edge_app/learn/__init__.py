"""``edgecls learn``: a new classifier head fitted on a frozen base model's embeddings, on the device."""
