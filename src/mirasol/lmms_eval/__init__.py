"""Mirasol in lmms-eval (needs the `lmms-eval` extra; docs/lmms-eval.md).

    lmms-eval --model mirasol --model_args run=RUN[,whole=true,window=16] --tasks TASK

lmms-eval's model registry loads the `lmms_eval.models` entry points of installed packages; this
package's (pyproject.toml) names `manifest` below, which points lmms-eval at the model class in
`mirasol.lmms_eval.model`. Kept free of torch and lmms-eval imports at module level: lmms-eval
reads every plugin's manifest whenever it starts.
"""

MODEL_ID = "mirasol"
MODEL_CLASS = "mirasol.lmms_eval.model.MirasolLMMS"


def manifest():
    """The entry point's payload: lmms-eval's ModelManifest for `--model mirasol`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)
