"""The robustness benchmark: models × (clean + corruptions × severities) → a tidy table, resumably.

Each model is built once and every scenario runs through one DataLoader whose worker processes
corrupt the images while the main process runs the models; every model that still needs a
scenario sees the same batch of corrupted pixels, so corruption is paid once per run, not once per
model. Clean images are scenario (clean, 0), scored once per model. More corruptions, severities
or models extend a run in the same folder; anything else that changes the detections is refused.

    settings     RobustnessSettings (what to run) and RobustnessRun (what came of it)
    run          run_robustness: inputs checked, the folder's books kept, pending scenarios run
    store        the run folder: resume keys, run.json, finished scenario files, a folder read back
    imports      mmdetection's results kept in a run folder beside kdeval's own models
    scheduling   one process, or torchrun's ranks sharing scenarios whole or by images
    inference    the models over the corrupted images, each finished scenario handed to scoring
    scoring      COCO stats and the scenario files, in this process or in spawned ones
    intervals    a finished run's bootstrap intervals, from the detections its folder keeps
The tables, text and figures are written by kdeval.report.robustness_tables.

Under torchrun, rank 0 keeps the folder's books (an import, --overwrite, run.json) before any
scenario runs, and reads every rank's finished scenarios back only after all have left the job at
the run's last collective (distributed.continue_on_main_rank), where the other ranks end.
"""

from kdeval.engine.robustness.run import run_robustness
from kdeval.engine.robustness.settings import RobustnessRun, RobustnessSettings

__all__ = ["RobustnessRun", "RobustnessSettings", "run_robustness"]
