#include "tiny_model.h"

#include <stdlib.h>
#include <string.h>

#include "cluda/config.h"
#include "testing.h"

int make_model(model *m, const char *set_override, uint64_t seed) {
  cluda_config cfg;
  cluda_segmentor_config sc;
  memset(m, 0, sizeof *m);
  if (!TEST_OK(cluda_config_init(&cfg))) return 0;
  int ok = TEST_OK(cluda_config_load_file(&cfg, TINY_CONFIG));
  if (ok && set_override) ok = TEST_OK(cluda_config_set(&cfg, set_override));
  ok = ok && TEST_OK(cluda_config_to_segmentor_config(&cfg, &sc));
  cluda_config_free(&cfg);
  ok = ok && TEST_OK(cluda_segmentor_create(&m->seg, &sc));
  if (!ok) return 0;
  m->params = test_alloc_f32((int64_t)m->seg.params.total);
  m->state = test_alloc_f32((int64_t)(m->seg.state.total ? m->seg.state.total : 1));
  memset(m->params, 0, sizeof(float) * m->seg.params.total);
  memset(m->state, 0, sizeof(float) * m->seg.state.total);
  return TEST_OK(cluda_segmentor_init(&m->seg, m->params, m->state, seed));
}

void free_model(model *m) {
  cluda_segmentor_free(&m->seg);
  free(m->params);
  free(m->state);
}
