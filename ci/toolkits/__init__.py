"""Provisioning private CUDA toolkits (ci/toolkit_fetch.py is the orchestrator and CLI), one job per module:

  errors        ToolkitFetchError / ToolkitUnavailable, running commands            (platform-neutral)
  nvcc          `nvcc --version` parsing, nvcc's environment, the version check   (platform-neutral)
  tree          markers, idempotent reuse, atomic install, the cross-process lock  (platform-neutral)
  apt           private apt configuration, control records, Depends resolution    (Debian)
  debian_home   Debian toolkit packages laid out as a CUDA_HOME                    (Debian)
  pypi_home     NVIDIA's PyPI wheels laid out as a CUDA_HOME                       (Linux)
  host_compiler default, lookup and Debian fetch of nvcc's host compiler           (Debian)
  verify        nvcc version + probe compile/link/load of a provisioned tree

The platform-neutral modules are what ci/build_variant.py and ci/wheel.py import on every platform; the Debian ones
are imported only when provisioning, which Windows never does (its toolkit comes from NVIDIA's redistributables,
ci/redistrib.py).
"""
