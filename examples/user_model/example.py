"""The example from Python: train the user's own model on the user's own data, compress it with
slimkit, save it, then in a fresh process load it into a fresh instance and serve one prediction.

    python examples/user_model/example.py [OUT]      (default OUT: runs/example)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import slimkit

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import mymodule  # noqa: E402  (the user's module, beside this script)

SERVE = """
import json, sys, torch, slimkit, mymodule
model = slimkit.load(sys.argv[1], model=mymodule.make_model()).model
row = json.loads(sys.argv[2])
with torch.no_grad():
    logit = model(torch.tensor([row["cats"]]), torch.tensor([row["nums"]]))
print(json.dumps({"click_probability": round(float(torch.sigmoid(logit)[0]), 6)}))
"""


def train(model: torch.nn.Module, task: mymodule.ClickTask, epochs: int = 6) -> None:
    """The user's own training loop (slimkit is not needed to train)."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        model.train()
        for batch in task.train_batches(256, seed=epoch):
            optimizer.zero_grad()
            task.loss(model(*task.inputs(batch)), batch).backward()
            optimizer.step()


def main(out: Path) -> None:
    task = mymodule.make_task()
    model = mymodule.make_model()
    train(model, task)
    before = task.evaluate(model)
    plan = slimkit.Plan.load(HERE / "plan.yaml")
    slimkit.compress_(model, plan, slimkit.Context(task=task, seed=0))
    after = task.evaluate(model)
    slimkit.save(model, out, task=task, metrics={"test": after})
    print(f"average precision {before['average_precision']:.4f} -> "
          f"{after['average_precision']:.4f}; artifact {out} "
          f"({slimkit.export.artifact_bytes(out)} bytes)")
    test = task.splits["test"]
    row = {"cats": test["cats"][0].tolist(), "nums": test["nums"][0].tolist()}
    served = subprocess.run([sys.executable, "-c", SERVE, str(out), json.dumps(row)],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(HERE)}, cwd=HERE)
    print("served in a fresh process:", served.stdout.strip())
    with torch.no_grad():
        here = float(torch.sigmoid(model(*task.inputs({k: v[:1] for k, v in test.items()})))[0])
    assert abs(json.loads(served.stdout)["click_probability"] - here) < 1e-6


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example"))
