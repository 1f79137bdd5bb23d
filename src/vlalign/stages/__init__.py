"""The stages methods share, each a function from run-store stages (and settings) to a stage:

    sample      n answers per prompt from the policy, one recorded seed each (here or on servers)
    label       claims of each answer, checked by a labeler's P(yes); sample + label + pair as one round
    pool        answers from a pool of models, k different ones per prompt
    ratings     an AI judge's 1-5 ratings on three aspects, with rationales and token use
    injection   the ground truth with hallucinations injected
    pairs       chosen against rejected by a score under pair rules; pairs read back for training

`settings` holds the keys they read (every run's, and those of sampled and of labeled answers); `round` what
a method's composition sees of a round, with the models it may hold for one stage. No stage imports a method.
"""
