"""raypref.parquet_read: small local Parquet inputs read through Ray Data's V1 reader, others through
the DataContext's (V2 by default); the context is left as it was."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _reader(ds) -> str:
    """The plan's read operator: ReadParquet (V1) or ReadFilesParquetV2 (below a column projection, say)."""
    op = ds._logical_plan.dag
    while op.input_dependencies and not op.name.startswith("Read"):
        op = op.input_dependencies[0]
    return op.name


def test_small_local_reads_take_v1_and_others_the_contexts_reader(ray_session, tmp_path, monkeypatch):
    from ray.data import DataContext

    from raypref.config import RayConf
    from raypref.parquet_read import parquet_mb, read_parquet
    from raypref.session import set_data_context

    (tmp_path / "d").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"a": list(range(1000 * i, 1000 * (i + 1)))}), tmp_path / "d" / f"{i}.parquet")
    sizes = [(tmp_path / "d" / f"{i}.parquet").stat().st_size for i in range(3)]
    assert parquet_mb(tmp_path / "d") == pytest.approx(sum(sizes) / 2**20)
    assert parquet_mb([tmp_path / "d" / "0.parquet"]) == pytest.approx((tmp_path / "d" / "0.parquet").stat().st_size / 2**20)
    assert parquet_mb(tmp_path / "d", stop_above=0) < parquet_mb(tmp_path / "d")  # stops at the first file past it
    assert parquet_mb("s3://bucket/pairs") is None and parquet_mb(tmp_path / "missing") is None

    ctx = DataContext.get_current()
    assert ctx.use_datasource_v2
    monkeypatch.setenv("RAYPREF_V1_READ_MAX_MB", "0")  # restored after the test
    set_data_context(RayConf())  # the default limit, as a stage sets it
    ds = read_parquet(str(tmp_path / "d"))
    assert _reader(ds) == "ReadParquet" and ctx.use_datasource_v2
    assert sorted(r["a"] for r in ds.take_all()) == list(range(3000))
    set_data_context(RayConf(v1_read_max_mb=sum(sizes[:2]) / 2**20))  # under the total: the context's reader
    assert _reader(read_parquet([str(tmp_path / "d" / f"{i}.parquet") for i in range(2)])) == "ReadParquet"
    assert _reader(read_parquet(str(tmp_path / "d"))) == "ReadFilesParquetV2"
    set_data_context(RayConf(v1_read_max_mb=0))
    v2 = read_parquet(str(tmp_path / "d"), columns=["a"])
    assert _reader(v2) == "ReadFilesParquetV2" and ctx.use_datasource_v2
    assert sorted(r["a"] for r in v2.take_all()) == list(range(3000))
    # arguments V1 does not take (or another filesystem) leave the read to the context's reader
    set_data_context(RayConf())
    assert _reader(read_parquet(str(tmp_path / "d"), ignore_missing_paths=True)) == "ReadFilesParquetV2"
