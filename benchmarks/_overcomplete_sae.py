"""overcomplete's TopK SAE on saved activations, for bench_dictionaries.py (runs in the separate
environment where overcomplete is installed; never imported by conceptkit).

Usage: OTHER_PYTHON _overcomplete_sae.py ROWS.npy N_CONCEPTS TOP_K EPOCHS SEED
Prints one JSON line: R², dead codes, seconds.
"""

import json
import sys
import time

import matplotlib
import matplotlib.cm
import numpy as np
import torch

matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap  # overcomplete 0.3 vs matplotlib >= 3.9

from overcomplete.sae import TopKSAE, train_sae  # noqa: E402
from overcomplete.sae.modules import TieableEncoder  # noqa: E402

path, k, top_k, epochs, seed = sys.argv[1], *map(int, sys.argv[2:6])
torch.manual_seed(seed)
torch.set_num_threads(1)
A = torch.from_numpy(np.load(path)).float()
mean = A.mean(0)
X = A - mean  # centred rows (overcomplete's SAE has no pre-encoder bias)
init = torch.nn.functional.normalize(torch.randn(k, A.shape[1]), dim=1)
encoder = TieableEncoder(A.shape[1], k, bias=True, weight_init=init.clone())
model = TopKSAE(A.shape[1], k, top_k=top_k, encoder_module=encoder,
                dictionary_params={"initializer": init.clone()})
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=256,
                                     shuffle=True)
criterion = lambda x, x_hat, *_: ((x - x_hat) ** 2).sum(-1).mean()  # noqa: E731
start = time.perf_counter()
train_sae(model, loader, criterion, torch.optim.Adam(model.parameters(), lr=1e-3),
          nb_epochs=epochs, monitoring=0)
seconds = time.perf_counter() - start
with torch.no_grad():
    _, z, x_hat = model(X)
r2 = 1 - float(((X - x_hat) ** 2).sum() / (X ** 2).sum())
print(json.dumps({"r2": r2, "dead": int((z.amax(0) <= 0).sum()), "seconds": seconds,
                  "mean_active": float((z > 0).sum(1).float().mean())}))
