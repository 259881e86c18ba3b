/*
 * hexbus.application._eager -- the eager start of Dispatcher.start, compiled.
 *
 * Why: starting four no-op handlers through the pure-Python runner costs ~0.8 us a
 * publish, twice what `for h in handlers: await h(event)` costs; most of it is the
 * interpreter stepping the runner generator, not the work. This file does the same
 * steps in C, with the same outcome for every handler; the Python code in dispatch.py
 * stays the specification, the fallback (no compiler, other interpreters, an
 * instrumented bus) and the owner of everything rare: a handler that suspends
 * (`adopt` gives it a Task), a failure (`failed` logs and counts it), a new
 * current-task stand-in (`new_stand_in`).
 *
 * What one publish does, as Dispatcher._run_eagerly and Dispatcher.start do:
 *   - asyncio.current_task() refers to a stand-in while handlers run eagerly;
 *   - handlers run one after the other in a copy of the publisher's context holding
 *     the delivery context; each is stepped until it finishes, fails or suspends;
 *   - a handler that suspends is adopted by a Task; one that changes the context (a
 *     contextvar set, or cancelling its stand-in) leaves a fresh copy to the next;
 *   - an Exception or a CancelledError raised eagerly is reported, never raised; any
 *     other BaseException propagates, after the registry is restored.
 *
 * ENGINE_API is checked by dispatch.py: a stale build of an older file is not used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define ENGINE_API 1

typedef struct {
    PyObject_HEAD
    PyObject *registry;         /* asyncio's current-task dict, keyed by loop */
    PyObject *get_running_loop; /* asyncio.get_running_loop */
    PyObject *delivery_var;     /* the delivery_context ContextVar */
    PyObject *cancelled_error;  /* asyncio.CancelledError */
    PyObject *stats;            /* DispatchStats: `published` and `handled` are added to */
    PyObject *new_stand_in;     /* new_stand_in(loop) -> stand-in */
    PyObject *adopt;            /* adopt(loop, ctx, coro, yielded, sub, event, context, stand_in) -> Task */
    PyObject *failed;           /* failed(sub, event, exc, context) */
    PyObject *stamp_causation;  /* stamp_causation(event) -> event (publishing step 5) */
    PyTypeObject *context_type; /* DeliveryContext: a NamedTuple of 7 fields */
    PyObject *stand_in;         /* kept between publishes until a handler suspends */
    PyObject *stand_in_loop;
    PyObject *loop;             /* the running loop of the last publish */
    unsigned long thread;       /* the thread it ran in */
    PyTypeObject *sub_type;     /* Subscription, whose `call` slot is read directly */
    Py_ssize_t call_offset;
    Py_ssize_t handled_offset;  /* of stats.handled, written directly */
    Py_ssize_t published_offset;
} Engine;

static PyObject *str_call, *str_handled, *str_cancels, *str_published;

/* The head of CPython's context object (Include/internal/pycore_context.h, the same
 * from 3.7 to 3.13): `ctx_vars` is the immutable mapping a contextvar set replaces.
 * Comparing that pointer is how "did the handler change the context?" costs nothing;
 * `vars_readable` is set only when a self-test at import finds the layout as expected,
 * and otherwise the comparison of two contexts (what the Python runner does) is used. */
typedef struct {
    PyObject_HEAD
    PyObject *ctx_prev;
    PyObject *ctx_vars;
} ContextHead;

static int vars_readable;

#define CONTEXT_VARS(ctx) (((ContextHead *)(ctx))->ctx_vars)

static int
check_context_layout(void)
{
    PyObject *var = PyContextVar_New("hexbus_layout_probe", NULL);
    PyObject *ctx = PyContext_New();
    PyObject *copy = NULL, *token = NULL;
    int readable = 0;
    if (var == NULL || ctx == NULL || (copy = PyContext_Copy(ctx)) == NULL) {
        goto done;
    }
    PyObject *before = CONTEXT_VARS(ctx);
    /* A copy shares the mapping; a set in one replaces it there alone. */
    if (before == NULL || CONTEXT_VARS(copy) != before || PyContext_Enter(ctx) < 0) {
        goto done;
    }
    token = PyContextVar_Set(var, Py_True);
    if (PyContext_Exit(ctx) < 0 || token == NULL) {
        goto done;
    }
    readable = CONTEXT_VARS(ctx) != before && CONTEXT_VARS(copy) == before &&
               CONTEXT_VARS(ctx) != NULL && Py_TYPE(CONTEXT_VARS(ctx)) == Py_TYPE(before);
done:
    PyErr_Clear();
    Py_XDECREF(token);
    Py_XDECREF(copy);
    Py_XDECREF(ctx);
    Py_XDECREF(var);
    return readable;
}

/* The running loop. asyncio.get_running_loop() makes a getpid() system call on 3.11,
 * a third of a publish. The last loop is still the running one when this is the
 * thread it ran in and it has a current task: a publish is awaited in a Task, and a
 * loop that stopped has none (asyncio removes the entry as a Task's step ends), as
 * does a loop of another thread seen from this one only while that loop runs a step,
 * which the thread check rules out. Otherwise, or outside any Task, ask asyncio. */
static PyObject *
running_loop(Engine *self, PyObject **current)
{
    *current = NULL;
    PyObject *loop = self->loop;
    if (loop != NULL && self->thread == PyThread_get_thread_ident()) {
        *current = PyDict_GetItemWithError(self->registry, loop);
        if (*current != NULL) {
            Py_INCREF(*current);
            return Py_NewRef(loop);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    loop = PyObject_CallNoArgs(self->get_running_loop);
    if (loop == NULL) {
        return NULL;
    }
    Py_XSETREF(self->loop, Py_NewRef(loop));
    self->thread = PyThread_get_thread_ident();
    *current = PyDict_GetItemWithError(self->registry, loop);
    if (*current == NULL && PyErr_Occurred()) {
        Py_DECREF(loop);
        return NULL;
    }
    Py_XINCREF(*current);
    return loop;
}

/* Where `type` keeps `name` in its instances, for a plain __slots__ member; -1 for
 * anything else (then the attribute protocol is used). A getattr per handler costs a
 * tenth of what starting a no-op handler costs. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    if (descr == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY)) {
            offset = member->offset;
        }
    }
    Py_DECREF(descr);
    return offset;
}

/* obj.<name>, from its slot where `obj` is exactly `type` and the slot is set. */
static inline PyObject *
read_slot(PyObject *obj, PyTypeObject *type, Py_ssize_t offset, PyObject *name)
{
    if (offset >= 0 && Py_TYPE(obj) == type) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(obj, name);
}

enum outcome { DONE, REPORTED, SUSPENDED, RAISED };

/* Give `loop` a fresh stand-in, registered as its current task. */
static int
renew_stand_in(Engine *self, PyObject *loop, PyObject **stand_in)
{
    PyObject *fresh = PyObject_CallOneArg(self->new_stand_in, loop);
    if (fresh == NULL) {
        return -1;
    }
    Py_SETREF(*stand_in, fresh);
    return PyDict_SetItem(self->registry, loop, fresh);
}

/* Report the exception being raised through `failed`, inside `ctx` as the runner does;
 * or leave it raised when it is not one a handler may raise (a BaseException). */
static enum outcome
report(Engine *self, PyObject *ctx, PyObject *sub, PyObject *event, PyObject *context)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception) &&
        !PyErr_ExceptionMatches(self->cancelled_error)) {
        return RAISED;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL) {
        return RAISED;
    }
    if (PyContext_Enter(ctx) < 0) {
        Py_DECREF(value);
        return RAISED;
    }
    PyObject *args[4] = {sub, event, value, context};
    PyObject *res = PyObject_Vectorcall(self->failed, args, 4, NULL);
    Py_DECREF(value);
    if (PyContext_Exit(ctx) < 0) {
        Py_XDECREF(res);
        return RAISED;
    }
    if (res == NULL) {
        return RAISED;
    }
    Py_DECREF(res);
    return REPORTED;
}

/* Start one handler in `ctx`: what `yield from sub.call(event)` does in the runner, up
 * to the first suspension. On SUSPENDED, *coro and *yielded are new references. */
static enum outcome
run_one(Engine *self, PyObject *ctx, PyObject *sub, PyObject *event, PyObject *context,
        PyObject **coro, PyObject **yielded)
{
    *coro = NULL;
    *yielded = NULL;
    if (PyContext_Enter(ctx) < 0) {
        return RAISED;
    }
    PyObject *call = read_slot(sub, self->sub_type, self->call_offset, str_call);
    PyObject *awaitable = call == NULL ? NULL : PyObject_CallOneArg(call, event);
    Py_XDECREF(call);
    PyObject *it = awaitable;
    if (awaitable != NULL && !PyCoro_CheckExact(awaitable) && !PyGen_CheckExact(awaitable)) {
        it = PyObject_GetIter(awaitable); /* as `yield from` takes a non-coroutine */
        Py_DECREF(awaitable);
    }
    PyObject *result = NULL;
    PySendResult sent = it == NULL ? PYGEN_ERROR : PyIter_Send(it, Py_None, &result);
    if (PyContext_Exit(ctx) < 0) {
        Py_XDECREF(it);
        Py_XDECREF(result);
        return RAISED;
    }
    if (sent == PYGEN_RETURN) {
        Py_DECREF(it);
        Py_XDECREF(result);
        return DONE;
    }
    if (sent == PYGEN_NEXT) {
        *coro = it;
        *yielded = result;
        return SUSPENDED;
    }
    Py_XDECREF(it);
    return report(self, ctx, sub, event, context);
}

/* stats.<name> += n */
static int
add_to_stat(Engine *self, PyObject *name, Py_ssize_t offset, Py_ssize_t n)
{
    if (n == 0) {
        return 0;
    }
    PyObject *stats = self->stats;
    PyObject *count = read_slot(stats, Py_TYPE(stats), offset, name);
    if (count == NULL) {
        return -1;
    }
    PyObject *more = PyLong_FromSsize_t(n);
    PyObject *sum = more == NULL ? NULL : PyNumber_Add(count, more);
    Py_DECREF(count);
    Py_XDECREF(more);
    if (sum == NULL) {
        return -1;
    }
    if (offset >= 0) {
        Py_XSETREF(*(PyObject **)((char *)stats + offset), sum);
        return 0;
    }
    int rc = PyObject_SetAttr(stats, name, sum);
    Py_DECREF(sum);
    return rc;
}

/* Run the handlers of `items` from *index on, in a fresh copy of the publisher's
 * context, until all ran or one suspended or changed the context. Returns -1 with an
 * exception raised, else 0. */
static int
run_in_fresh_context(Engine *self, PyObject *loop, PyObject **items, Py_ssize_t n,
                     Py_ssize_t *index, PyObject *event, PyObject *context,
                     PyObject **stand_in, PyObject **pending, Py_ssize_t *handled)
{
    PyObject *ctx = PyContext_CopyCurrent();
    if (ctx == NULL) {
        return -1;
    }
    /* What the context holds before any handler runs: its mapping (held, so that its
     * address cannot be reused by the mapping of a set), or a copy to compare with. */
    PyObject *clean = NULL;
    int rc = -1;
    if (PyContext_Enter(ctx) < 0) {
        goto done;
    }
    PyObject *token = PyContextVar_Set(self->delivery_var, context);
    if (PyContext_Exit(ctx) < 0 || token == NULL) {
        Py_XDECREF(token);
        goto done;
    }
    Py_DECREF(token);
    clean = vars_readable ? Py_NewRef(CONTEXT_VARS(ctx)) : PyContext_Copy(ctx);
    if (clean == NULL) {
        goto done;
    }
    while (*index < n) {
        PyObject *sub = items[(*index)++];
        PyObject *coro, *yielded;
        enum outcome outcome = run_one(self, ctx, sub, event, context, &coro, &yielded);
        if (outcome == RAISED) {
            goto done;
        }
        if (outcome == DONE) {
            (*handled)++;
        }
        else if (outcome == SUSPENDED) {
            /* A Task carries this handler on; the stand-in it may have seen as its
             * current task now forwards to that Task; the rest start clean. */
            PyObject *args[8] = {loop, ctx, coro, yielded, sub, event, context, *stand_in};
            PyObject *task = PyObject_Vectorcall(self->adopt, args, 8, NULL);
            Py_DECREF(coro);
            Py_DECREF(yielded);
            if (task == NULL) {
                goto done;
            }
            if (*pending == NULL) {
                *pending = PyList_New(0);
            }
            int added = *pending == NULL ? -1 : PyList_Append(*pending, task);
            Py_DECREF(task);
            if (added < 0 || renew_stand_in(self, loop, stand_in) < 0) {
                goto done;
            }
            break;
        }
        int changed = vars_readable ? CONTEXT_VARS(ctx) != clean
                                    : PyObject_RichCompareBool(ctx, clean, Py_NE);
        if (changed < 0) {
            goto done;
        }
        if (changed) {
            /* A contextvar set, or the stand-in cancelled: the next starts clean. */
            PyObject *cancels = PyObject_GetAttr(*stand_in, str_cancels);
            int cancelled = cancels == NULL ? -1 : PyObject_IsTrue(cancels);
            Py_XDECREF(cancels);
            if (cancelled < 0 || (cancelled && renew_stand_in(self, loop, stand_in) < 0)) {
                goto done;
            }
            break;
        }
    }
    rc = 0;
done:
    Py_DECREF(ctx);
    Py_XDECREF(clean);
    return rc;
}

/* Dispatcher.start_in_python, compiled; `seq` is a tuple, borrowed. */
static PyObject *
start(Engine *self, PyObject *event, PyObject *seq, PyObject *context)
{
    PyObject *previous = NULL; /* the loop's current task (a new reference) */
    PyObject *loop = running_loop(self, &previous);
    if (loop == NULL) {
        return NULL;
    }
    /* Taken, not shared: a publish from inside a handler makes its own. */
    PyObject *stand_in = self->stand_in;
    self->stand_in = NULL;
    if (stand_in == NULL || self->stand_in_loop != loop) {
        Py_XDECREF(stand_in);
        stand_in = PyObject_CallOneArg(self->new_stand_in, loop);
        if (stand_in == NULL) {
            Py_XDECREF(previous);
            Py_DECREF(loop);
            return NULL;
        }
        Py_XSETREF(self->stand_in_loop, Py_NewRef(loop));
    }
    PyObject *pending = NULL;
    Py_ssize_t handled = 0, index = 0, n = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    int rc = -1;
    if (PyDict_SetItem(self->registry, loop, stand_in) < 0) {
        goto restore;
    }
    while (index < n) {
        if (run_in_fresh_context(self, loop, items, n, &index, event, context, &stand_in,
                                 &pending, &handled) < 0) {
            goto restore;
        }
    }
    rc = add_to_stat(self, str_handled, self->handled_offset, handled);
restore:;
    /* As `finally:` does: the registry as it was, the stand-in kept for next time. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int undone = previous != NULL ? PyDict_SetItem(self->registry, loop, previous)
                                  : PyDict_DelItem(self->registry, loop);
    if (undone < 0) {
        if (PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear();
        }
        else if (type == NULL) {
            PyErr_Fetch(&type, &value, &tb);
            rc = -1;
        }
        else {
            PyErr_Clear();
        }
    }
    PyErr_Restore(type, value, tb);
    Py_XSETREF(self->stand_in, stand_in);
    Py_XDECREF(previous);
    Py_DECREF(loop);
    if (rc < 0) {
        Py_XDECREF(pending);
        return NULL;
    }
    if (pending == NULL) {
        Py_RETURN_NONE;
    }
    return pending;
}

/* start(event, subs, context) -> list[Task] | None */
static PyObject *
Engine_start(Engine *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "start() takes (event, subs, context)");
        return NULL;
    }
    /* A tuple (what the route table holds) as is; anything else as a snapshot, so a
     * handler that changes a list it was given cannot pull items from under the loop. */
    PyObject *seq = PySequence_Tuple(args[1]);
    if (seq == NULL) {
        return NULL;
    }
    PyObject *pending = start(self, args[0], seq, args[2]);
    Py_DECREF(seq);
    return pending;
}

/* deliver(event, subs, metadata, session, key) -> list[Task] | None:
 * Dispatcher.deliver_in_python, compiled. */
static PyObject *
Engine_deliver(Engine *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "deliver() takes (event, subs, metadata, session, key)");
        return NULL;
    }
    PyObject *current;
    if (PyContextVar_Get(self->delivery_var, NULL, &current) < 0) {
        return NULL;
    }
    /* Inside a handler (the delivery context holds an event): stamp the causation. */
    int in_handler = current != NULL && PyTuple_Check(current) && PyTuple_GET_SIZE(current) > 0 &&
                     PyTuple_GET_ITEM(current, 0) != Py_None;
    Py_XDECREF(current);
    PyObject *event = in_handler ? PyObject_CallOneArg(self->stamp_causation, args[0])
                                 : Py_NewRef(args[0]);
    if (event == NULL) {
        return NULL;
    }
    PyObject *seq = NULL, *context = NULL, *pending = NULL;
    if (add_to_stat(self, str_published, self->published_offset, 1) < 0) {
        goto done;
    }
    seq = PySequence_Tuple(args[1]);
    if (seq == NULL) {
        goto done;
    }
    if (PyTuple_GET_SIZE(seq) == 0) {
        pending = Py_NewRef(Py_None);
        goto done;
    }
    /* DeliveryContext(event, metadata, 1, session, key, None, None), as
     * tuple.__new__ makes it (dispatch.py checks the fields these positions assume). */
    context = self->context_type->tp_alloc(self->context_type, 7);
    if (context == NULL) {
        goto done;
    }
    PyObject *fields[7] = {event, args[2], NULL, args[3], args[4], Py_None, Py_None};
    fields[2] = PyLong_FromLong(1); /* attempt */
    if (fields[2] == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < 7; i++) {
        PyTuple_SET_ITEM(context, i, i == 2 ? fields[i] : Py_NewRef(fields[i]));
    }
    pending = start(self, event, seq, context);
done:
    Py_DECREF(event);
    Py_XDECREF(seq);
    Py_XDECREF(context);
    return pending;
}

static PyObject *
Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"registry",          "get_running_loop", "delivery_var",
                            "cancelled_error",   "stats",            "subscription_type",
                            "context_type",      "new_stand_in",     "adopt",
                            "failed",            "stamp_causation",  NULL};
    PyObject *registry, *get_running_loop, *delivery_var, *cancelled_error, *stats;
    PyObject *sub_type, *context_type, *new_stand_in, *adopt, *failed, *stamp_causation;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOOOO!O!OOOO:Engine", names, &PyDict_Type,
                                     &registry, &get_running_loop, &delivery_var,
                                     &cancelled_error, &stats, &PyType_Type, &sub_type,
                                     &PyType_Type, &context_type, &new_stand_in, &adopt, &failed,
                                     &stamp_causation)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)context_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "context_type must be a NamedTuple (DeliveryContext)");
        return NULL;
    }
    if (!PyContextVar_CheckExact(delivery_var)) {
        PyErr_SetString(PyExc_TypeError, "delivery_var must be a contextvars.ContextVar");
        return NULL;
    }
    Engine *self = (Engine *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->registry = Py_NewRef(registry);
    self->get_running_loop = Py_NewRef(get_running_loop);
    self->delivery_var = Py_NewRef(delivery_var);
    self->cancelled_error = Py_NewRef(cancelled_error);
    self->stats = Py_NewRef(stats);
    self->new_stand_in = Py_NewRef(new_stand_in);
    self->adopt = Py_NewRef(adopt);
    self->failed = Py_NewRef(failed);
    self->stamp_causation = Py_NewRef(stamp_causation);
    self->context_type = (PyTypeObject *)Py_NewRef(context_type);
    self->stand_in = NULL;
    self->stand_in_loop = NULL;
    self->loop = NULL;
    self->thread = 0;
    self->sub_type = (PyTypeObject *)Py_NewRef(sub_type);
    self->call_offset = slot_offset(self->sub_type, str_call);
    /* stats is fixed for the engine's life: so is its type, checked here once. */
    self->handled_offset = slot_offset(Py_TYPE(stats), str_handled);
    self->published_offset = slot_offset(Py_TYPE(stats), str_published);
    return (PyObject *)self;
}

static int
Engine_traverse(Engine *self, visitproc visit, void *arg)
{
    Py_VISIT(self->registry);
    Py_VISIT(self->get_running_loop);
    Py_VISIT(self->delivery_var);
    Py_VISIT(self->cancelled_error);
    Py_VISIT(self->stats);
    Py_VISIT(self->new_stand_in);
    Py_VISIT(self->adopt);
    Py_VISIT(self->failed);
    Py_VISIT(self->stand_in);
    Py_VISIT(self->stand_in_loop);
    Py_VISIT(self->loop);
    Py_VISIT(self->sub_type);
    Py_VISIT(self->stamp_causation);
    Py_VISIT(self->context_type);
    return 0;
}

static int
Engine_clear(Engine *self)
{
    Py_CLEAR(self->registry);
    Py_CLEAR(self->get_running_loop);
    Py_CLEAR(self->delivery_var);
    Py_CLEAR(self->cancelled_error);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->new_stand_in);
    Py_CLEAR(self->adopt);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->stand_in);
    Py_CLEAR(self->stand_in_loop);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->sub_type);
    Py_CLEAR(self->stamp_causation);
    Py_CLEAR(self->context_type);
    return 0;
}

static void
Engine_dealloc(Engine *self)
{
    PyObject_GC_UnTrack(self);
    Engine_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Engine_methods[] = {
    {"start", (PyCFunction)(void (*)(void))Engine_start, METH_FASTCALL,
     "start(event, subs, context) -> list[Task] | None: Dispatcher.start, compiled."},
    {"deliver", (PyCFunction)(void (*)(void))Engine_deliver, METH_FASTCALL,
     "deliver(event, subs, metadata, session, key) -> list[Task] | None: "
     "Dispatcher.deliver, compiled."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hexbus.application._eager.Engine",
    .tp_doc = "The eager start of one Dispatcher (see hexbus.application.dispatch).",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Engine_new,
    .tp_traverse = (traverseproc)Engine_traverse,
    .tp_clear = (inquiry)Engine_clear,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hexbus.application._eager",
    .m_doc = "The eager start of hexbus's dispatcher, compiled (optional; see dispatch.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__eager(void)
{
    str_call = PyUnicode_InternFromString("call");
    str_handled = PyUnicode_InternFromString("handled");
    str_cancels = PyUnicode_InternFromString("_cancels");
    str_published = PyUnicode_InternFromString("published");
    vars_readable = check_context_layout();
    if (str_call == NULL || str_handled == NULL || str_cancels == NULL || str_published == NULL ||
        PyType_Ready(&EngineType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "API", ENGINE_API) < 0 ||
        PyModule_AddIntConstant(m, "READS_CONTEXT_VARS", vars_readable) < 0 ||
        PyModule_AddType(m, &EngineType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
