//! Bindings of the token belt: `Belt`, `Mixture`, `ShardWriter` and `shard_info`. Batches are
//! assembled with the GIL released and handed to numpy without a copy (the Vec moves into the
//! array). States cross as plain dicts of ints and bools so they go straight into JSON.

use super::convert::{ids_from_numpy, to_py};
use crate::belt::{
    lock, Belt, BeltConfig, BeltState, Cursor, Header, Mixture, MixtureState, Shard, ShardWriter, SharedBelt,
};
use crate::error::Error;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyFileNotFoundError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const STATE_VERSION: u64 = 1;

type Arr<'py> = Bound<'py, PyArray2<i64>>;

fn array<'py>(py: Python<'py>, v: Vec<i64>, b: usize, t: usize) -> PyResult<Arr<'py>> {
    Array2::from_shape_vec((b, t), v)
        .map(|a| a.into_pyarray(py))
        .map_err(|e| to_py(Error::shape("Belt", e.to_string())))
}

/// One path (str or os.PathLike) or a sequence of them; a missing file is FileNotFoundError.
fn shard_paths(obj: &Bound<'_, PyAny>) -> PyResult<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = match obj.extract::<PathBuf>() {
        Ok(p) => vec![p],
        Err(_) => obj.extract()?,
    };
    if let Some(p) = paths.iter().find(|p| !p.is_file()) {
        return Err(PyFileNotFoundError::new_err(format!("token shard not found: {}", p.display())));
    }
    Ok(paths)
}

/// Positions and segment ids of the last batch, kept for `last_positions`/`last_segments`.
#[derive(Default)]
struct Last {
    masks: Option<(Vec<i64>, Vec<i64>)>,
    shape: (usize, usize),
    doc_mask: bool,
}

impl Last {
    fn get<'py>(&self, py: Python<'py>, which: usize) -> PyResult<Arr<'py>> {
        let what = ["last_positions", "last_segments"][which];
        if !self.doc_mask {
            return Err(to_py(Error::value("Belt", format!("{what}: the belt was made with doc_mask=False"))));
        }
        let Some((p, s)) = &self.masks else {
            return Err(to_py(Error::value("Belt", format!("{what}: no batch has been taken yet"))));
        };
        array(py, [p, s][which].clone(), self.shape.0, self.shape.1)
    }
}

fn state_dict<'py>(py: Python<'py>, s: &BeltState) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", STATE_VERSION)?;
    d.set_item("seed", s.seed)?;
    d.set_item("shuffle", s.shuffle)?;
    d.set_item("epoch", s.cursor.epoch)?;
    d.set_item("doc_index", s.cursor.index)?;
    d.set_item("offset", s.cursor.offset)?;
    d.set_item("batches", s.batches)?;
    d.set_item("n_docs", s.n_docs)?;
    d.set_item("n_tokens", s.n_tokens)?;
    d.set_item("fingerprint", s.fingerprint)?;
    Ok(d)
}

fn item<'py, T: FromPyObject<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v.extract().map_err(|e| to_py(Error::value("load_state", format!("state[{key:?}]: {e}")))),
        None => Err(to_py(Error::value("load_state", format!("the state has no {key:?} (is it a belt state?)")))),
    }
}

fn check_version(d: &Bound<'_, PyDict>) -> PyResult<()> {
    let v: u64 = item(d, "version")?;
    if v != STATE_VERSION {
        return Err(to_py(Error::value("load_state", format!("state version {v}, this build reads {STATE_VERSION}"))));
    }
    Ok(())
}

fn state_from_dict(d: &Bound<'_, PyDict>) -> PyResult<BeltState> {
    check_version(d)?;
    Ok(BeltState {
        seed: item(d, "seed")?,
        shuffle: item(d, "shuffle")?,
        cursor: Cursor { epoch: item(d, "epoch")?, index: item(d, "doc_index")?, offset: item(d, "offset")? },
        batches: item(d, "batches")?,
        n_docs: item(d, "n_docs")?,
        n_tokens: item(d, "n_tokens")?,
        fingerprint: item(d, "fingerprint")?,
    })
}

/// Belt(paths, seq_len, batch_size, seed=0, rank=0, world=1, doc_mask=False, prefetch=2,
/// shuffle=True, vocab_size=None, verify=True): batches of packed rows from token shards.
#[pyclass(name = "Belt", module = "sos_rs._core")]
pub struct PyBelt {
    inner: SharedBelt,
    last: Last,
}

impl PyBelt {
    fn with<R>(&self, f: impl FnOnce(&Belt) -> R) -> PyResult<R> {
        Ok(f(&*lock(&self.inner).map_err(to_py)?))
    }
}

#[pymethods]
impl PyBelt {
    #[new]
    #[pyo3(signature = (
        paths, seq_len, batch_size, seed=0, rank=0, world=1, doc_mask=false, prefetch=2, shuffle=true,
        vocab_size=None, verify=true
    ))]
    fn py_new(
        py: Python<'_>,
        paths: &Bound<'_, PyAny>,
        seq_len: usize,
        batch_size: usize,
        seed: u64,
        rank: usize,
        world: usize,
        doc_mask: bool,
        prefetch: usize,
        shuffle: bool,
        vocab_size: Option<u32>,
        verify: bool,
    ) -> PyResult<Self> {
        let paths = shard_paths(paths)?;
        let cfg =
            BeltConfig { seq_len, batch_size, seed, rank, world, doc_mask, shuffle, prefetch, verify, vocab_size };
        let belt = py.allow_threads(|| Belt::open(&paths, cfg)).map_err(to_py)?;
        Ok(PyBelt {
            inner: Arc::new(Mutex::new(belt)),
            last: Last { doc_mask, shape: (batch_size, seq_len), masks: None },
        })
    }

    /// (ids, targets): int64 arrays [B, T]; targets[b, t] = ids[b, t + 1] inside each row of T+1.
    fn next_batch<'py>(&mut self, py: Python<'py>) -> PyResult<(Arr<'py>, Arr<'py>)> {
        let inner = self.inner.clone();
        let batch = py.allow_threads(move || lock(&inner).and_then(|mut b| b.next_batch())).map_err(to_py)?;
        let (b, t) = self.last.shape;
        self.last.masks = batch.positions.zip(batch.segments);
        Ok((array(py, batch.ids, b, t)?, array(py, batch.targets, b, t)?))
    }

    /// Positions [B, T] of the last batch: from 0 at each row start and each document start.
    fn last_positions<'py>(&self, py: Python<'py>) -> PyResult<Arr<'py>> {
        self.last.get(py, 0)
    }

    /// Segment ids [B, T] of the last batch: documents of a row numbered from 0.
    fn last_segments<'py>(&self, py: Python<'py>) -> PyResult<Arr<'py>> {
        self.last.get(py, 1)
    }

    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        state_dict(py, &self.with(|b| b.state())?)
    }

    fn load_state(&mut self, py: Python<'_>, state: &Bound<'_, PyDict>) -> PyResult<()> {
        let st = state_from_dict(state)?;
        let inner = self.inner.clone();
        py.allow_threads(move || lock(&inner).and_then(|mut b| b.load_state(&st))).map_err(to_py)?;
        self.last.masks = None;
        Ok(())
    }

    #[getter]
    fn vocab_size(&self) -> PyResult<u32> {
        self.with(|b| b.corpus().vocab_size())
    }
    #[getter]
    fn eot_id(&self) -> PyResult<u32> {
        self.with(|b| b.corpus().eot_id())
    }
    /// Tokens in one pass over all shards (all ranks together).
    #[getter]
    fn tokens_per_epoch(&self) -> PyResult<u64> {
        self.with(|b| b.corpus().n_tokens())
    }
    #[getter]
    fn documents(&self) -> PyResult<u64> {
        self.with(|b| b.corpus().n_docs())
    }
    /// Epoch of the next token to be handed out (0 until the first epoch is used up).
    #[getter]
    fn epoch(&self) -> PyResult<u64> {
        self.with(|b| b.epoch())
    }
    #[getter]
    fn batches(&self) -> PyResult<u64> {
        self.with(|b| b.batches())
    }
    #[getter]
    fn seq_len(&self) -> usize {
        self.last.shape.1
    }
    #[getter]
    fn batch_size(&self) -> usize {
        self.last.shape.0
    }
    #[getter]
    fn doc_mask(&self) -> bool {
        self.last.doc_mask
    }
    #[getter]
    fn rank(&self) -> PyResult<usize> {
        self.with(|b| b.config().rank)
    }
    #[getter]
    fn world(&self) -> PyResult<usize> {
        self.with(|b| b.config().world)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<(Arr<'py>, Arr<'py>)> {
        self.next_batch(py)
    }

    fn __repr__(&self) -> PyResult<String> {
        self.with(|b| {
            let c = b.config();
            format!(
                "Belt(documents={}, tokens_per_epoch={}, seq_len={}, batch_size={}, rank={}/{}, epoch={}, \
                 vocab_size={})",
                b.corpus().n_docs(),
                b.corpus().n_tokens(),
                c.seq_len,
                c.batch_size,
                c.rank,
                c.world,
                b.epoch(),
                b.corpus().vocab_size()
            )
        })
    }
}

/// Mixture([(belt, weight), ...], seed=0): each batch comes from one belt drawn by weight.
#[pyclass(name = "Mixture", module = "sos_rs._core")]
pub struct PyMixture {
    inner: Mixture,
    belts: Vec<Py<PyBelt>>,
    last: Last,
    last_source: Option<usize>,
}

#[pymethods]
impl PyMixture {
    #[new]
    #[pyo3(signature = (belts, seed=0))]
    fn py_new(belts: Vec<(Py<PyBelt>, f64)>, seed: u64, py: Python<'_>) -> PyResult<Self> {
        let parts = belts.iter().map(|(b, w)| (b.borrow(py).inner.clone(), *w)).collect();
        let inner = Mixture::new(parts, seed).map_err(to_py)?;
        let first = belts[0].0.borrow(py);
        let last = Last { doc_mask: first.last.doc_mask, shape: first.last.shape, masks: None };
        drop(first);
        Ok(PyMixture { inner, belts: belts.into_iter().map(|(b, _)| b).collect(), last, last_source: None })
    }

    fn next_batch<'py>(&mut self, py: Python<'py>) -> PyResult<(Arr<'py>, Arr<'py>)> {
        let inner = &mut self.inner;
        let (i, batch) = py.allow_threads(|| inner.next_batch()).map_err(to_py)?;
        let (b, t) = self.last.shape;
        self.last.masks = batch.positions.zip(batch.segments);
        self.last_source = Some(i);
        Ok((array(py, batch.ids, b, t)?, array(py, batch.targets, b, t)?))
    }

    fn last_positions<'py>(&self, py: Python<'py>) -> PyResult<Arr<'py>> {
        self.last.get(py, 0)
    }
    fn last_segments<'py>(&self, py: Python<'py>) -> PyResult<Arr<'py>> {
        self.last.get(py, 1)
    }
    /// Index of the belt the last batch came from.
    #[getter]
    fn last_source(&self) -> Option<usize> {
        self.last_source
    }
    #[getter]
    fn belts(&self, py: Python<'_>) -> Vec<Py<PyBelt>> {
        self.belts.iter().map(|b| b.clone_ref(py)).collect()
    }
    #[getter]
    fn vocab_size(&self, py: Python<'_>) -> PyResult<u32> {
        self.belts[0].borrow(py).vocab_size()
    }
    #[getter]
    fn seq_len(&self) -> usize {
        self.last.shape.1
    }
    #[getter]
    fn batch_size(&self) -> usize {
        self.last.shape.0
    }

    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.inner.state().map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("version", STATE_VERSION)?;
        d.set_item("seed", st.seed)?;
        d.set_item("draws", st.draws)?;
        let belts = st.belts.iter().map(|s| state_dict(py, s)).collect::<PyResult<Vec<_>>>()?;
        d.set_item("belts", PyList::new(py, belts)?)?;
        Ok(d)
    }

    fn load_state(&mut self, py: Python<'_>, state: &Bound<'_, PyDict>) -> PyResult<()> {
        check_version(state)?;
        let belts: Vec<Bound<'_, PyDict>> = item(state, "belts")?;
        let belts = belts.iter().map(state_from_dict).collect::<PyResult<Vec<_>>>()?;
        let st = MixtureState { seed: item(state, "seed")?, draws: item(state, "draws")?, belts };
        let inner = &mut self.inner;
        py.allow_threads(|| inner.load_state(&st)).map_err(to_py)?;
        self.last.masks = None;
        for b in &self.belts {
            b.borrow_mut(py).last.masks = None;
        }
        Ok(())
    }
}

fn header_dict<'py>(py: Python<'py>, path: &std::path::Path, h: &Header) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", path.display().to_string())?;
    d.set_item("version", crate::belt::VERSION)?;
    d.set_item("dtype", h.dtype_name())?;
    d.set_item("vocab_size", h.vocab_size)?;
    d.set_item("eot_id", h.eot_id)?;
    d.set_item("n_tokens", h.n_tokens)?;
    d.set_item("n_docs", h.n_docs)?;
    d.set_item("checksum", h.checksum)?;
    Ok(d)
}

/// shard_info(path, verify=True) -> the validated header of a shard, as a dict.
#[pyfunction]
#[pyo3(signature = (path, verify=true))]
fn shard_info<'py>(py: Python<'py>, path: PathBuf, verify: bool) -> PyResult<Bound<'py, PyDict>> {
    if !path.is_file() {
        return Err(PyFileNotFoundError::new_err(format!("token shard not found: {}", path.display())));
    }
    let h = py.allow_threads(|| Shard::open(&path, verify).map(|s| *s.header())).map_err(to_py)?;
    header_dict(py, &path, &h)
}

/// ShardWriter(path, vocab_size, eot_id): appends documents, `close()` finishes the file.
/// As a context manager it closes on success and deletes the unfinished file on error.
#[pyclass(name = "ShardWriter", module = "sos_rs._core")]
pub struct PyShardWriter {
    inner: Option<ShardWriter>,
    path: PathBuf,
}

impl PyShardWriter {
    fn open(&mut self) -> PyResult<&mut ShardWriter> {
        let p = self.path.display().to_string();
        self.inner.as_mut().ok_or_else(|| to_py(Error::value("ShardWriter", format!("{p} is already closed"))))
    }
}

/// Token ids as u32: uint32 arrays are read in place, other integer arrays are converted.
fn u32s(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u32>> {
    if let Ok(a) = obj.downcast::<numpy::PyArray1<u32>>() {
        if let Ok(s) = a.readonly().as_slice() {
            return Ok(s.to_vec());
        }
    }
    let (v, shape) = ids_from_numpy(py, obj, what)?;
    if shape.len() != 1 {
        return Err(to_py(Error::shape("ShardWriter", format!("{what} must be 1-D, got shape {shape:?}"))));
    }
    Ok(v)
}

#[pymethods]
impl PyShardWriter {
    #[new]
    fn py_new(path: PathBuf, vocab_size: u32, eot_id: u32) -> PyResult<Self> {
        let inner = ShardWriter::create(&path, vocab_size, eot_id).map_err(to_py)?;
        Ok(PyShardWriter { inner: Some(inner), path })
    }

    /// Appends documents given end to end in `tokens` (1-D integer array) with `lengths`.
    fn add_documents(&mut self, py: Python<'_>, tokens: &Bound<'_, PyAny>, lengths: &Bound<'_, PyAny>) -> PyResult<()> {
        if tokens.downcast::<numpy::PyUntypedArray>().map(|a| a.ndim() != 1).unwrap_or(false) {
            return Err(to_py(Error::shape("ShardWriter", "tokens must be a 1-D array")));
        }
        let toks = u32s(py, tokens, "tokens")?;
        let lens: Vec<u64> = u32s(py, lengths, "lengths")?.into_iter().map(u64::from).collect();
        let w = self.open()?;
        py.allow_threads(|| w.push_documents(&toks, &lens)).map_err(to_py)
    }

    #[getter]
    fn n_tokens(&self) -> u64 {
        self.inner.as_ref().map(|w| w.header().n_tokens).unwrap_or(0)
    }
    #[getter]
    fn n_docs(&self) -> u64 {
        self.inner.as_ref().map(|w| w.header().n_docs).unwrap_or(0)
    }

    /// Finishes the shard and returns its header as a dict.
    fn close<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.open()?;
        let w = self.inner.take().expect("checked open");
        let h = py.allow_threads(|| w.finish()).map_err(to_py)?;
        header_dict(py, &self.path, &h)
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &mut self,
        py: Python<'_>,
        exc_type: Option<PyObject>,
        _exc: Option<PyObject>,
        _tb: Option<PyObject>,
    ) -> PyResult<bool> {
        match exc_type {
            None if self.inner.is_some() => self.close(py).map(|_| false),
            _ => {
                self.inner = None; // dropping an unfinished writer deletes its temporary file
                Ok(false)
            }
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBelt>()?;
    m.add_class::<PyMixture>()?;
    m.add_class::<PyShardWriter>()?;
    m.add_function(wrap_pyfunction!(shard_info, m)?)?;
    Ok(())
}
