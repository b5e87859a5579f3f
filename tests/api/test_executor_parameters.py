"""The executor's template parameters (docs/executors.md): `slurm_partition`, `slurm_account` and
`slurm_qos` are taken as text whatever the package declares; names Slurm reads as options are refused.
On both databases, through the real app."""

from httpx import AsyncClient

from tests.api.packages_kit import upload_package, valid_package, zip_bytes
from tests.api.world import make_world, ok, problem


async def test_a_declaring_package_takes_the_executors_parameters_as_text(client: AsyncClient) -> None:
    world = await make_world(client)
    templates = f"/projects/{world.project}/templates"
    ok(await upload_package(client, world.project, "declared", zip_bytes(valid_package())), 201)
    base = {"model_type": world.model_type, "base_package": "declared"}
    executor = {"slurm_partition": "gpu", "slurm_account": "lab", "slurm_qos": "high"}
    fields = {"name": "t1", **base, "parameters": {"epochs": 3, **executor}}
    created = ok(await client.post(templates, json=fields), 201)
    assert {name: created["parameters"][name] for name in executor} == executor
    for wrong in ({"slurm_partition": 3}, {"slurm_qos": ""}, {"slurm_account": True}):
        problem(
            await client.post(templates, json={"name": "t2", **base, "parameters": wrong}),
            422,
            "invalid_parameter",
        )
    # Other names the package does not declare are refused as ever.
    problem(
        await client.post(templates, json={"name": "t3", **base, "parameters": {"slurm_nodes": "2"}}),
        422,
        "unknown_parameter",
    )
    names = [t["name"] for t in ok(await client.get(templates))["items"]]
    assert "t2" not in names and "t3" not in names


async def test_names_slurm_reads_as_options_are_refused(client: AsyncClient) -> None:
    world = await make_world(client)
    templates = f"/projects/{world.project}/templates"
    for name in ("SBATCH_PARTITION", "SLURM_CONF", "SRUN_CPUS_PER_TASK"):
        answer = await client.post(
            templates, json={"name": "t", "model_type": world.model_type, "parameters": {name: "x"}}
        )
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "reserved" in answer.text, answer.text
