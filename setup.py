"""One distribution, extras per side: the host trains and compiles, the edge device installs sdk + one runtime."""

from setuptools import find_packages, setup

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]

setup(
    name="m2f-edge",
    version="0.1.0",
    description="Train Mask2Former, compile it for ONNX Runtime / OpenVINO / TensorRT, run it on the edge",
    python_requires=">=3.10",
    packages=find_packages(include=["plugins*", "train*", "compile*", "runtimes*", "sdk*", "benchmarks*"]),
    package_data={
        "train.model": ["zoo_classes.json"],
        "compile": ["tensorrt_onnx_support.json"],
        "sdk": ["models/*.onnx", "models/*.md", "models/registry.json"],
        "plugins.msda": ["*.cu", "*.cpp", "*.h", "*.hpp", "*.md", "*.json", "CMakeLists.txt", "openvino/*.txt"],
    },
    install_requires=["numpy>=1.26", "opencv-python-headless>=4.9", "tqdm>=4.66"],
    extras_require={
        "train": [
            *TORCH,
            "timm>=1.0",
            "safetensors>=0.4",
            "scipy>=1.11",
            "pycocotools>=2.0.8",
            "pyyaml>=6",
            "tensorboard>=2.15",
            "tflite>=2.10",  # pretrained weights from LiteRT files (the schema in pure Python)
            # the compiler (host side): export, simplify, quantize, gate TensorRT graphs on ONNX Runtime
            "onnx>=1.16",
            "onnxscript>=0.1",
            "onnxslim>=0.1",
            "onnxruntime-extensions>=0.12",
            "nncf>=2.12",
        ],
        "onnxruntime": ["onnxruntime>=1.18"],
        "openvino": ["openvino>=2024.4"],
        # TensorRT comes from NVIDIA's index (pip install --extra-index-url https://pypi.nvidia.com; on a Jetson from
        # JetPack's apt packages, seen through a --system-site-packages venv); CUDA memory and streams through
        # cuda-python (wheels for x86-64 and aarch64; runtimes/cuda_memory.py also takes pycuda where installed)
        "tensorrt": ["tensorrt>=10.0", "cuda-python>=12.3"],
        # m2f batch --ray (sdk/batch_ray.py): Ray Data's actor pools, tested on 2.60; below 2.64, which drops
        # map_batches' ray_remote_args (max_task_retries, which the killed-worker retries need). pyarrow: Parquet
        "fleet": ["ray[data]>=2.60,<2.64", "pyarrow>=14"],
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "pytest-timeout>=2.3",
            "pytest-benchmark>=4",
            "ruff>=0.6",
            "transformers>=4.45",
            "matplotlib>=3.8",
            "psutil>=5.9",
            "ai-edge-litert>=1.2",  # LiteRT's interpreter: the oracle for .tflite weights and the peer model's runtime
            "imageio-ffmpeg>=0.5",  # a static ffmpeg: the real HTTP stream server of tests/sdk/test_network_streams.py
        ],
    },
    entry_points={"console_scripts": ["m2f=sdk.cli:main"]},
)
