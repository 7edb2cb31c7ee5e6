from setuptools import find_namespace_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

# The checkpoint card's templates and styles, beside the card's code.
CARD = "metaflow_extensions.implicit_checkpoint.plugins.cards.checkpoint"

setup(
    name="metaflow-implicit-checkpoint",
    version="0.1.0",
    description="Crash-safe Metaflow steps: @checkpoint saves and restores the step's own attributes.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_namespace_packages(include=["metaflow_extensions.*"]),
    package_data={CARD: ["templates/*.html", "templates/*.css"]},
    python_requires=">=3.9",
    install_requires=[
        "metaflow>=2.15.21",
        "cloudpickle>=3.0",
        "msgpack>=1.0",
        # BLAKE3: a cryptographic content hash at memory speed (see engine/hashing.py).
        "blake3>=1.0",
    ],
    extras_require={
        # torch's Tensor.numpy() is on the save path: torch itself does not require numpy.
        "torch": ["torch>=2.1", "numpy>=1.24"],
        # 1.36: botocore's request_checksum_calculation (engine/s3_backend.py sets it).
        "s3": ["boto3>=1.36"],
        # transformers, accelerate and lightning test the framework callbacks
        # (metaflow.checkpoint_callbacks): the package itself never needs them.
        # metaflow-torchrun: tests/test_torchrun.py runs its @torchrun under @checkpoint.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "numpy>=1.24",
            "boto3>=1.36",
            "moto[server]>=5.0",
            "metaflow-torchrun>=0.2.2",
            "transformers>=5.24",
            "accelerate>=1.15",
            "lightning>=2.6",
            # tests/test_fuzz_trust.py fuzzes what a load reads back from the store.
            "hypothesis>=6.100",
            # tests/test_preemption_flow.py resumes a StatefulDataLoader mid-epoch.
            "torchdata>=0.8",
        ],
    },
)
