"""openlbm.envs: simulator adapters, task instructions, scripted experts and parallel rollout workers.

MuJoCo picks its OpenGL backend when it is first imported, so the headless default (EGL) is chosen here, before
any submodule imports ``mujoco`` or ``metaworld``. An explicit ``MUJOCO_GL`` always wins.
"""

import os

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"
