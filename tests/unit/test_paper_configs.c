/* The paper configs (configs/gta2cs_daformer_cluda.yaml, configs/syn2cs_daformer_cluda.yaml;
 * algorithm.md 0.1 and 4.3) load through the config loader and resolve to the paper's numbers. */
#include <math.h>
#include <string.h>

#include "cluda/config.h"
#include "cluda/trainer.h"
#include "testing.h"

#define CONFIG_DIR CLUDA_FIXTURE_DIR "/../../configs"

static void check_config(const char *name, const char *protocol) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", CONFIG_DIR, name);
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  if (TEST_OK(cluda_config_load_file(&cfg, path))) {
    const char *encoder = NULL, *proto = NULL;
    int64_t iters = 0, batch = 0, embed = 0, channels = 0, warmup = 0;
    double lr = 0;
    TEST_OK(cluda_config_get_string(&cfg, "model.encoder", &encoder));
    TEST_OK(cluda_config_get_int(&cfg, "model.embed_dims", &embed));
    TEST_OK(cluda_config_get_int(&cfg, "model.channels", &channels));
    TEST_OK(cluda_config_get_int(&cfg, "train.max_iters", &iters));
    TEST_OK(cluda_config_get_int(&cfg, "train.batch", &batch));
    TEST_OK(cluda_config_get_int(&cfg, "optim.warmup_iters", &warmup));
    TEST_OK(cluda_config_get_float(&cfg, "optim.lr", &lr));
    TEST_OK(cluda_config_get_string(&cfg, "eval.num_classes_protocol", &proto));
    TEST_CHECK(encoder && strcmp(encoder, "b5") == 0, "%s: encoder b5", name);
    TEST_CHECK(embed == 512 && channels == 256, "%s: E 512, Cf 256", name);
    TEST_CHECK(iters == 40000 && batch == 2 && warmup == 1500,
               "%s: 40000 iterations, batch 2, warm-up 1500", name);
    TEST_CHECK(fabs(lr - 6e-5) < 1e-12, "%s: lr 6e-5 (%g)", name, lr);
    TEST_CHECK(proto && strcmp(proto, protocol) == 0, "%s: protocol %s", name, protocol);
    cluda_train_settings s;
    cluda_segmentor_config mc;
    if (TEST_OK(cluda_train_settings_from_config(&cfg, &s)) &&
        TEST_OK(cluda_config_to_segmentor_config(&cfg, &mc))) {
      TEST_CHECK(s.crop_h == 512 && s.crop_w == 512 && s.cl_h == 65 && s.cl_w == 65,
                 "%s: 512x512 crops, 65x65 contrast map", name);
      TEST_CHECK(s.ema_alpha == 0.999 && s.pseudo_threshold == 0.968f && s.fd_lambda == 0.005f &&
                     s.cl.tau == 1.0f,
                 "%s: EMA 0.999, threshold 0.968, FD 0.005, tau 1", name);
      TEST_CHECK(s.rcs && s.rcs_temperature == 0.01 && s.rcs_min_pixels == 3000,
                 "%s: RCS T 0.01, min pixels 3000", name);
      TEST_CHECK(!s.cl_ref_row_order && !s.cl.ref_half && !s.cl.ref_pair_weight,
                 "%s: no ref_ quirks", name);
      TEST_CHECK(mc.head.num_classes == 19, "%s: 19 classes", name);
      TEST_CHECK(!s.source_synthetic && !s.target_synthetic, "%s: real data sets", name);
    }
    /* the data pipeline of algorithm.md 4.3 */
    const char *source = NULL, *target = NULL, *pretrained = NULL;
    int source_scale[2] = {0, 0}, target_scale[2] = {0, 0};
    double cat = 0, min_crop = 0;
    TEST_OK(cluda_config_get_string(&cfg, "data.source", &source));
    TEST_OK(cluda_config_get_string(&cfg, "data.target", &target));
    TEST_OK(cluda_config_get_string(&cfg, "model.pretrained", &pretrained));
    TEST_OK(cluda_config_get_int_list(&cfg, "data.source_scale", source_scale, 2, NULL));
    TEST_OK(cluda_config_get_int_list(&cfg, "data.target_scale", target_scale, 2, NULL));
    TEST_OK(cluda_config_get_float(&cfg, "data.cat_max_ratio", &cat));
    TEST_OK(cluda_config_get_float(&cfg, "data.rcs_min_crop_ratio", &min_crop));
    const int synthia = !strcmp(protocol, "13");
    TEST_CHECK(source && !strcmp(source, synthia ? "synthia" : "gta") && target &&
                   !strcmp(target, "cityscapes"),
               "%s: %s -> cityscapes", name, synthia ? "synthia" : "gta");
    TEST_CHECK(source_scale[0] == 1280 && source_scale[1] == (synthia ? 760 : 720) &&
                   target_scale[0] == 1024 && target_scale[1] == 512,
               "%s: resize to (1280, %d) and (1024, 512)", name, synthia ? 760 : 720);
    TEST_CHECK(cat == 0.75 && min_crop == 0.5, "%s: cat_max_ratio 0.75, RCS min_crop_ratio 0.5",
               name);
    TEST_CHECK(pretrained && strstr(pretrained, "mit_b5"), "%s: ImageNet MiT-B5 weights", name);
  }
  cluda_config_free(&cfg);
}

int main(void) {
  check_config("gta2cs_daformer_cluda.yaml", "19");
  check_config("syn2cs_daformer_cluda.yaml", "13");
  return test_finish("test_paper_configs");
}
