/* ------------------------------------------------------------------------------------------ */
/* threads: a dynamic parallel-for (the machine is shared, so work is taken in small grains)   */

#include "threads.h"


typedef struct {
    task_fn fn;
    void *ctx;
    int64_t n, grain, next;
    size_t scratch;
} pool_t;

/* Worker scratch is reused across calls: large blocks come from mmap and would otherwise be
 * faulted in and zeroed by the kernel on every call.  A few released blocks are kept. */
#define SCRATCH_KEEP 8
static pthread_mutex_t g_scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_scratch[SCRATCH_KEEP];
static size_t g_scratch_size[SCRATCH_KEEP];

static void *scratch_get(size_t size) {
    void *best = NULL;
    int bi = -1;
    pthread_mutex_lock(&g_scratch_lock);
    for (int i = 0; i < SCRATCH_KEEP; i++)
        if (g_scratch[i] && g_scratch_size[i] >= size && (bi < 0 || g_scratch_size[i] < g_scratch_size[bi])) bi = i;
    if (bi >= 0) {
        best = g_scratch[bi];
        g_scratch[bi] = NULL;
    }
    pthread_mutex_unlock(&g_scratch_lock);
    if (!best) {
        size = (size + 4095) / 4096 * 4096;
        best = aligned_alloc(64, size);
    }
    return best;
}

static void scratch_put(void *ptr, size_t size) {
    if (!ptr) return;
    size = (size + 4095) / 4096 * 4096;
    pthread_mutex_lock(&g_scratch_lock);
    int slot = -1;
    for (int i = 0; i < SCRATCH_KEEP && slot < 0; i++)
        if (!g_scratch[i]) slot = i;
    if (slot < 0) {                              /* full: replace the smallest if this one is larger */
        int sm = 0;
        for (int i = 1; i < SCRATCH_KEEP; i++)
            if (g_scratch_size[i] < g_scratch_size[sm]) sm = i;
        if (g_scratch_size[sm] < size) {
            free(g_scratch[sm]);
            slot = sm;
        }
    }
    if (slot >= 0) {
        g_scratch[slot] = ptr;
        g_scratch_size[slot] = size;
        ptr = NULL;
    }
    pthread_mutex_unlock(&g_scratch_lock);
    free(ptr);
}

static void *pool_worker(void *arg) {
    pool_t *p = (pool_t *)arg;
    void *scratch = p->scratch ? scratch_get(p->scratch) : NULL;
    for (;;) {
        int64_t lo = __atomic_fetch_add(&p->next, p->grain, __ATOMIC_RELAXED);
        if (lo >= p->n) break;
        int64_t hi = lo + p->grain < p->n ? lo + p->grain : p->n;
        p->fn(p->ctx, lo, hi, scratch);
    }
    scratch_put(scratch, p->scratch);
    return NULL;
}

void bh_par_for(int threads, int64_t n, int64_t grain, task_fn fn, void *ctx, size_t scratch) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    pool_t p = {fn, ctx, n, grain, 0, scratch};
    int64_t chunks = (n + grain - 1) / grain;
    int extra = threads - 1;
    if (extra > 63) extra = 63;
    if (extra > chunks - 1) extra = (int)(chunks - 1);
    pthread_t th[64];
    int started = 0;
    for (int i = 0; i < extra; i++)
        if (pthread_create(&th[started], NULL, pool_worker, &p) == 0) started++;
    pool_worker(&p);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
}

int64_t bh_grain_for(int64_t n, int threads, int64_t cap) {
    int64_t g = n / (4 * (threads > 0 ? threads : 1));
    if (g > cap) g = cap;
    return g < 1 ? 1 : g;
}
